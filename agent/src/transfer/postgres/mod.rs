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
//!    LSN to replicate from: `SnapshotMethod::REPLICATION_SLOT` is where a
//!    migration will plug in.
//!    Before it, a short description of each database (versions,
//!    extensions, sizes) is checked, so a copy that cannot succeed is
//!    refused before the target is changed. In the snapshot, the source
//!    describes the database while its `pg_dump` runs (step 4), and lists
//!    the schema's objects (for step 7) while the data flows.
//! 2. **Roles first** (they are global): every role the database refers to,
//!    with its password verifier copied as-is, so the same password works.
//!    Existing roles are altered, never dropped; superusers are never
//!    touched.
//! 3. **The database** is created on the target with the source's owner,
//!    encoding, locale, privileges and settings (a copy left by an earlier
//!    attempt is dropped first: a copy is disposable; nothing is ever
//!    dropped or written on the source).
//! 4. **Schema before data**: the source's own `pg_dump` (its version can
//!    read its server) dumps the pre-data and post-data sections in custom
//!    format; the target's `pg_restore` (which reads older archives)
//!    restores pre-data.
//! 5. **Data in parallel**: N workers copy tables, biggest first, with
//!    `COPY ... TO STDOUT (FORMAT binary)` on the source streamed into
//!    `COPY ... FROM STDIN` on the target; a table whose types cannot
//!    travel in binary goes as text; big tables are split into block ranges
//!    (TID range scans). The source digests the rows it sends ([`digest`]).
//!    A test's copy is digested as it arrives and compared before each
//!    unit commits; any other copy is also read back as soon as a table is
//!    loaded, and compared (SQL checksums on both sides, [`checksum`], are
//!    the slower option).
//!    Large objects' contents, and sequence values, follow. If the link or
//!    the snapshot is lost, the database is copied again with a new
//!    snapshot.
//!    As soon as a table is loaded and checked, its worker builds the
//!    table's indexes (`pg_get_indexdef` from the source) and attaches the
//!    PRIMARY KEY and UNIQUE constraints they back (`ADD CONSTRAINT ...
//!    USING INDEX`), while other tables still copy; an index that fails
//!    there is left to step 6.
//! 6. **Post-data in parallel**: `pg_restore -j N --section=post-data`,
//!    less what step 5 built (its table of contents filtered by OID),
//!    builds the other indexes and constraints (foreign keys, exclusion
//!    constraints, partitioned indexes) and triggers and refreshes
//!    materialized views; then `ANALYZE` of what needs those objects
//!    (expression indexes, extended statistics, partitioned tables,
//!    materialized views). Every table was already analyzed in step 5,
//!    while it was checked.
//! 7. **Verification**: row counts and digests of every table, sequence
//!    values, every large object's SHA-256, and the schema compared object
//!    for object ([`schema_objects`]). Any difference fails the copy,
//!    naming the object.
//!
//! # Layout
//!
//! - [`source`]: the peer service (source side): the snapshot, and the
//!   streams (COPY, pg_dump, large objects);
//! - [`mod@pull`]: the target side (preflight, the held snapshot, sequences),
//!   with [`target`] (roles and the database), [`restore`] (pg_restore,
//!   statistics), [`tables`] (parallel data and its checks) and
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
//! - The target runs no SQL text received from the source except the
//!   pg_dump archive it restores (as pg_restore would); every name is
//!   quoted here.
//! - Each database copy can be repeated: the target database is rebuilt
//!   from scratch, roles are ensured, not created blindly.

pub mod acceptance;
pub mod checksum;
pub mod describe;
pub mod digest;
pub mod error;
pub mod large_objects;
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
