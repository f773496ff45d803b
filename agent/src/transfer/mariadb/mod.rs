//! MariaDB/MySQL copies: an account's databases, with their users (same
//! names, same password hashes) and their privileges, views, routines,
//! triggers and events, checked table by table after the copy.
//!
//! Both sides live here; `proto/navette/v1/mariadb_copy.proto` describes the
//! protocol step by step.
//!
//! - [`source`]: [`MariadbSourceService`], the `navette.v1.MariadbSource`
//!   peer service the source agent serves; every call checks the transfer's
//!   grant (caller's host, server and database). The one place source-side
//!   errors become `tonic::Status`.
//! - [`target`]: [`pull_for_account`], run by the target agent: what it
//!   accepts, users, database, the load as a per-copy loader user, grants,
//!   verification; progress reported to a
//!   [`Progress`](super::progress::Progress).
//! - `catalogue`: what a database holds (information_schema, mysql.*
//!   privilege tables, SHOW CREATE USER / SHOW GRANTS) and live checksums.
//! - `dump`: the dump stream: `mariadb-dump` for the schema and triggers,
//!   one consistent-snapshot session for the rows.
//! - [`rows`]: row literals and the checksum built on them.
//! - [`privileges`]: reading SHOW GRANTS; deciding which grants a target
//!   accepts, and writing its GRANTs.
//! - [`users`]: which users are the account's; SHOW CREATE USER parsed
//!   into fields, CREATE USER / ALTER USER built from them.
//! - `definers`: the check of every DEFINER in a dump, on the target,
//!   before the loader receives it.
//! - `client`: running `mariadb` and `mariadb-dump`, SQL quoting.
//!
//! # Consistency
//!
//! All rows of one database are read in ONE session, inside
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT`: InnoDB tables are copied as
//! they were at one instant, without a lock, while the account keeps
//! reading and writing. The checksum that travels after each table is
//! computed from exactly the rows sent, so the target's comparison is exact
//! however much the source changes meanwhile: the guarantee is "the copy
//! equals the source as it was at the snapshot, table by table, row by
//! row" (modulo a 64-bit-per-row hash sum).
//!
//! Limits, on purpose:
//! - one stream per database, no parallel table dumps: parallel sessions
//!   cannot share an InnoDB snapshot without a global read lock
//!   (`FLUSH TABLES WITH READ LOCK`, as mydumper takes), which waits for
//!   every running statement and blocks every writer meanwhile;
//! - MyISAM and Aria tables have no snapshot: each is read by one SELECT,
//!   which holds that table's read lock for its duration (writers of that
//!   table wait; concurrent inserts at the end of a MyISAM table do not),
//!   and is consistent in itself but not with the other tables;
//! - the schema is read by `mariadb-dump` just before the rows' snapshot:
//!   DDL during a copy may fail it (run it again);
//! - system-versioned tables are copied with their current rows only;
//! - only the account's users (`alice`, `alice_*`) are copied, not roles
//!   and not other grantees, and only their privileges on the account's
//!   databases; a user with a global privilege, or with privileges on
//!   another account's database, refuses the copy;
//! - every view, routine, trigger and event must be defined by one of the
//!   account's users copied with the database (a DEFINER=root object
//!   refuses the copy).
//!
//! # Trust
//!
//! The target does not trust its source: an old host may be compromised,
//! and a customer's schema is the customer's code. What the source
//! *describes* (users, definitions, grants) is parsed into fields and
//! checked before anything is created; the statements the server's
//! administrative user runs are built from those fields. What the source
//! *sends* (the dump) runs only as the copy's loader user: privileges on
//! the copy's database and nothing else, definers checked before each
//! byte reaches it, no client commands (`--binary-mode`), no reading of
//! this host's files (`--local-infile=0`).

mod catalogue;
pub(crate) mod client;
mod definers;
mod dump;
pub mod privileges;
pub mod rows;
pub mod source;
pub mod target;
pub mod users;

pub use catalogue::CatalogueError;
pub use client::ClientError;
pub use source::MariadbSourceService;
pub use target::{
    DatabaseReport, MariadbCopyError, MariadbReport, PullOptions, TableCheck, pull,
    pull_for_account, pull_with_options, remove_account_users,
};
