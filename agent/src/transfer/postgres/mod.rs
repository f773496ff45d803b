//! PostgreSQL databases, copied from a source host to a target host running
//! the same or a newer major version, while the source keeps serving.
//!
//! # How a database is copied
//!
//! The target agent drives ([`pull()`]); the source agent serves
//! `navette.v1.PostgresSource` ([`PostgresSourceService`]). Data flows
//! agent to agent, never through the controller.
//!
//! 1. **One snapshot.** The source opens a REPEATABLE READ transaction,
//!    exports its snapshot (`pg_export_snapshot()`), takes ACCESS SHARE
//!    locks on the tables (what pg_dump takes: reads and writes go on, DDL
//!    waits), and holds it for as long as the target keeps the
//!    `HoldSnapshot` stream open. Every other call imports that snapshot,
//!    so schema, tables, large objects and checksums all see the database at
//!    one instant. A logical replication slot created with
//!    `(SNAPSHOT 'export')` would give the same kind of snapshot plus the
//!    LSN to replicate from: with `SnapshotMethod::REPLICATION_SLOT`
//!    (`PullOptions::replication_slots`), a migration's copy reads in the
//!    snapshot its slot exported ([`crate::replication::postgres`]).
//!    Before it, a short description of each database (versions,
//!    extensions, sizes) is checked, so a copy that cannot succeed is
//!    refused before the target is changed. In the snapshot, the source
//!    describes the database while its `pg_dump` runs (step 4), and lists
//!    the schema's objects (for step 7) while the data flows.
//! 2. **What the target accepts** ([`acceptance`]): the source is not
//!    trusted. Its description (roles, memberships, settings, the
//!    database's owner and privileges, index definitions) and its pg_dump
//!    archive's table of contents are checked against the target before
//!    anything is applied: only the account's own roles, no power over
//!    other roles or the server, no predefined role, only settings any user
//!    may set, only archive entries the account owns and a non-superuser
//!    may restore. Every refusal is a finding naming what was refused; the
//!    copy fails with all of them and the target is left as it was.
//! 3. **Roles, the database, the loader**, by the target's superuser, on
//!    statements built here from accepted fields ([`target`]): every role
//!    the database refers to, claimed first for the account in the target
//!    server's role ledger ([`ledger`]: a role another account's copy
//!    holds, or one no copy made, is never touched), with its password
//!    verifier copied as-is, so
//!    the same password works (existing roles are altered, never dropped;
//!    SUPERUSER, CREATEROLE, REPLICATION and BYPASSRLS are always set off);
//!    the database, with the source's owner, encoding and locale (a copy
//!    left by an earlier attempt is dropped first: a copy is disposable;
//!    nothing is ever dropped or written on the source); and the copy's
//!    *loader* ([`loader`]), a login role with a random password that is a
//!    member of the account's roles only. From here on, everything of the
//!    customer's schema runs in sessions authenticated as the loader:
//!    CHECK constraints, domains, generated columns, index expressions,
//!    triggers and the functions they call run with the account's power,
//!    even if they `RESET ROLE`.
//! 4. **Schema before data**: the source's own `pg_dump` (its version can
//!    read its server) dumps the pre-data and post-data sections in custom
//!    format; the target's `pg_restore` (which reads older archives),
//!    connected as the loader and given the accepted entries only,
//!    restores pre-data in three steps: the schemas, then (by the
//!    superuser, from the target's own installation) the extensions in
//!    them, then the rest.
//! 5. **Data in parallel**, as the loader, each unit and index build
//!    under the table owner's role: N workers copy tables, biggest first, with
//!    `COPY ... TO STDOUT (FORMAT binary)` on the source streamed into
//!    `COPY ... FROM STDIN` on the target; a table whose types cannot
//!    travel in binary goes as text; big tables are split into block ranges
//!    (TID range scans). The source digests the rows it sends ([`digest`]).
//!    A test's copy is digested as it arrives and compared before each
//!    unit commits; any other copy is also read back as soon as a table is
//!    loaded, and compared (SQL checksums on both sides, [`checksum`], are
//!    the slower option).
//!    Large objects' contents, and sequence values, follow. If the link,
//!    the source's server (a restart) or the snapshot is lost, the database
//!    is copied again with a new snapshot, for as long as the outage rule
//!    of [`crate::transfer::outage`] allows (two minutes from the first
//!    failure); the progress says what the copy waits for meanwhile.
//!    As soon as a table is loaded and checked, its worker builds the
//!    table's indexes (`pg_get_indexdef` from the source, checked to be one
//!    `CREATE INDEX` on that table and sent through the extended query
//!    protocol, which refuses a second statement) and attaches the
//!    PRIMARY KEY and UNIQUE constraints they back (`ADD CONSTRAINT ...
//!    USING INDEX`), while other tables still copy; an index that fails
//!    there is left to step 6.
//! 6. **Post-data in parallel**: `pg_restore -j N --section=post-data` as
//!    the loader, of the accepted entries less what step 5 built,
//!    builds the other indexes and constraints (foreign keys, exclusion
//!    constraints, partitioned indexes) and triggers and refreshes
//!    materialized views; then `ANALYZE` of what needs those objects
//!    (expression indexes, extended statistics, partitioned tables,
//!    materialized views). Every table was already analyzed in step 5,
//!    while it was checked.
//! 7. **Verification**: row counts and digests of every table, sequence
//!    values, every large object's SHA-256, and the schema compared object
//!    for object ([`schema_objects`]). Any difference fails the copy,
//!    naming the object. Then the loader is dropped (also when the copy
//!    fails), and the superuser sets the database's privileges, settings
//!    and connection limit.
//!
//! # Layout
//!
//! - [`source`]: the peer service (source side): the snapshot, and the
//!   streams (COPY, pg_dump, large objects);
//! - [`mod@pull`]: the target side (preflight, the held snapshot, sequences),
//!   with [`acceptance`] (what the target accepts), [`target`] (what the
//!   superuser does: roles, the database, extensions), [`loader`] (the
//!   role the rest runs as), [`restore`] (pg_restore, statistics),
//!   [`tables`] (parallel data and its checks) and
//!   [`large_objects`]; [`tally`] lets an attempt be taken back from the
//!   progress;
//! - [`describe`], [`schema_objects`], [`checksum`], [`digest`]: what both
//!   sides compute alike;
//! - [`session`]: connections and quoting; [`tools`]: PostgreSQL's client
//!   programs; [`error`]: the target's errors.
//!
//! # Invariants
//!
//! - The source is only read: READ ONLY transactions, pg_dump, ACCESS
//!   SHARE locks. Nothing in this module writes to a source server.
//! - Nothing the source sends runs with more than the account's power on
//!   the target. SQL text from the source (the archive's accepted entries,
//!   checked index definitions) runs only in the loader's sessions; the
//!   superuser's session runs only statements built here from accepted
//!   fields, every name quoted.
//! - A copy creates, alters and grants only the account's roles, and the
//!   loader, which it drops however the copy ends.
//! - Each database copy can be repeated: the target database is rebuilt
//!   from scratch, roles are ensured, not created blindly.

pub mod acceptance;
pub mod checksum;
pub mod describe;
pub mod digest;
pub mod error;
pub mod large_objects;
pub mod ledger;
pub mod loader;
pub mod pull;
pub mod restore;
pub mod schema_objects;
pub mod session;
pub mod source;
pub mod tables;
pub mod tally;
pub mod target;
pub mod tools;
pub mod wire;

pub use error::PostgresCopyError;
pub use pull::{DatabaseReport, PostgresReport, PullOptions, pull};
pub use source::PostgresSourceService;
pub use tables::DataCheck;
pub use tools::PgTools;

/// Size of the chunks COPY output and dumps travel in.
pub const CHUNK_BYTES: usize = 1 << 20;
