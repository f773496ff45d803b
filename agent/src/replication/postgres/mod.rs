//! PostgreSQL logical replication from an account's source server to its
//! target server, so that the target copy of each database keeps
//! converging with the source while the account runs, from the copy's own
//! snapshot: nothing is copied twice or missed.
//!
//! # How a database converges
//!
//! 1. **Source, before the copy** ([`source::prepare`], by the source
//!    agent as the server's superuser): the server must have
//!    `wal_level = logical`; a database holding large objects is refused
//!    (logical replication does not carry them; carry them or remove them
//!    first); every table without a primary key (or other replica identity
//!    index) gets `REPLICA IDENTITY FULL`, so that its UPDATEs and DELETEs
//!    are published rather than refused on the source or lost (the one
//!    change made to the customer's schema: catalog metadata, no data
//!    rewritten; the target matches rows by all columns, which is slow on
//!    big tables, and a column type without an equality operator cannot
//!    be matched: such a table should get a key); a publication for the
//!    account's tables; the slot naming the changes the freeze verifies
//!    (`test_decoding`, [`crate::verify::postgres_rows`]); after the copy,
//!    a replication role of its own ([`source::admit_subscriber`]).
//! 2. **The copy's snapshot** ([`slot`]): the copy asks the source for
//!    `SnapshotMethod::REPLICATION_SLOT` with [`Names::slot`]; the slot is
//!    created with an exported snapshot, and the whole copy (schema, data,
//!    checks) reads in it. Changes committed after the slot's consistent
//!    point are in the slot, those before it in the copy.
//! 3. **Target, after the copy** ([`target::subscribe`], by the target
//!    agent as its superuser): a subscription with `create_slot = false`,
//!    `copy_data = false`, the slot and the publication above. It applies
//!    as each table's owner (`run_as_owner = false`, the default of
//!    PostgreSQL 16 and later): the customer's triggers (those enabled
//!    `ALWAYS` or `REPLICA`) and the functions they call run with the
//!    customer's role, never the superuser's.
//! 4. **Lag and drain** ([`source::lag`], [`source::drain`]): the bytes of
//!    WAL between the source's current position and what the target
//!    confirmed having applied (the slot's `confirmed_flush_lsn`), and a
//!    wait, with a deadline, until the target applied everything up to a
//!    position (a WAL message is written after it and flushed, so an idle
//!    or fenced source does not stall the wait on its WAL writer). While
//!    converging the subscription commits what it applies without a flush
//!    (`synchronous_commit = off`, to keep ahead of a busy source); just
//!    before the freeze [`target::set_apply_flush`] turns that on, so that
//!    the target confirms each transaction as soon as it is applied rather
//!    than when its WAL writer flushes.
//! 5. **Sequences** are not replicated: [`source::read_sequences`] and
//!    [`target::write_sequences`] carry their values, inside the freeze.
//! 6. **Teardown** ([`target::teardown`], then [`source::teardown`]): the
//!    subscription (detached from its slot first, so a slot already gone
//!    does not block it), the slot, the verification's slot, the
//!    publication, the role. Each is
//!    "drop if present": retrying is harmless; customer data is untouched.
//!
//! # The replication role, and what it can see
//!
//! The subscription connects to the source as `navette_r_<hash>`, a role
//! created for one migration and database: LOGIN and REPLICATION, no
//! other attribute, no table privilege, a random 128-bit password (only
//! its SCRAM verifier reaches the source; the password is stored on the
//! target in `pg_subscription`, which only superusers read), valid for
//! seven days, and dropped at teardown. REPLICATION is a large power: with
//! a `replication` line in pg_hba.conf it could take a physical base
//! backup of the whole source server, or create a slot in any database it
//! may connect to, and decode every published change there. It is
//! acceptable because the password never leaves the platform's own agents
//! and the target server (a platform host the customer has no superuser
//! on), is never logged, lives for one migration only, and the role holds
//! nothing once dropped; customers never receive it.
//!
//! # Invariants
//!
//! - Every object here is named from the migration id and the database
//!   ([`Names`]), never by the customer: a retry finds what an earlier
//!   attempt made; two migrations never share an object.
//! - Nothing here writes customer rows; only the subscription's apply
//!   worker does, as the tables' owners.

pub mod slot;
pub mod source;
pub mod target;

/// The objects of one migration's replication of one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The publication on the source database.
    pub publication: String,
    /// The logical replication slot on the source server.
    pub slot: String,
    /// The subscription on the target database.
    pub subscription: String,
    /// The role the subscription connects to the source as.
    pub role: String,
    /// The source's `test_decoding` slot naming the changes to verify
    /// ([`crate::verify::postgres_rows`]).
    pub verify_slot: String,
}

impl Names {
    /// The names for `migration_id`'s replication of source `database`:
    /// `navette_m_<hash>` and `navette_r_<hash>`, the hash being the
    /// first 64 bits of SHA-256 over both (any database name gives names
    /// PostgreSQL accepts, under its 63-byte limit).
    pub fn new(migration_id: &str, database: &str) -> Names {
        let mut input = migration_id.as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(database.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let object = format!("navette_m_{hex}");
        Names {
            publication: object.clone(),
            slot: object.clone(),
            subscription: object,
            role: format!("navette_r_{hex}"),
            verify_slot: format!("navette_v_{hex}"),
        }
    }
}

/// Replication object names: lowercase letters, digits and underscores,
/// at most 63 bytes (what slot names allow).
pub fn check_object_name(name: &str) -> Result<(), ReplicationError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ReplicationError::BadRequest(format!(
            "{name:?} is not a replication object name (lowercase letters, digits, _)"
        )))
    }
}

/// What went wrong, with the server (and database) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The server could not be reached.
    #[error("PostgreSQL server {server}, database {database}: cannot connect")]
    Connect {
        server: String,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query failed.
    #[error("PostgreSQL server {server}: {what}")]
    Query {
        server: String,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server is not set up for logical replication.
    #[error(
        "PostgreSQL server {server} cannot be replicated from: {reason}; an operator sets wal_level = logical in its postgresql.conf and restarts it"
    )]
    NotReady { server: String, reason: String },
    /// The database holds what replication would lose.
    #[error("PostgreSQL server {server}, database {database}: {reason}")]
    Refused {
        server: String,
        database: String,
        reason: String,
    },
    /// Creating the slot failed.
    #[error(
        "PostgreSQL server {server}, database {database}: creating replication slot {slot}: {message}"
    )]
    Slot {
        server: String,
        database: String,
        slot: String,
        message: String,
    },
    /// An object stays in use.
    #[error("PostgreSQL server {server}: {what}; retry later")]
    Busy { server: String, what: String },
    /// The slot the call is about does not exist (replication not
    /// started, or torn down).
    #[error(
        "PostgreSQL server {server}: no replication slot {slot}; start the replication (copy with the slot's snapshot) first"
    )]
    NoSlot { server: String, slot: String },
    /// The target did not apply up to the position in time.
    #[error(
        "PostgreSQL server {server}: the target applied up to {applied}, not {wanted}, within {seconds} s; keep converging and drain again"
    )]
    DrainTimeout {
        server: String,
        wanted: String,
        applied: String,
        seconds: u64,
    },
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
}

impl ReplicationError {
    /// A closure turning a query error into [`ReplicationError::Query`].
    pub(crate) fn query(
        server: &str,
        what: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> ReplicationError + use<> {
        let (server, what) = (server.to_owned(), what.to_owned());
        move |source| ReplicationError::Query {
            server,
            what,
            source,
        }
    }
}

/// The gRPC status a replication error is answered with, its message
/// the whole chain (which says what to do).
pub fn status(error: &ReplicationError) -> tonic::Status {
    let message = crate::error_chain(error);
    match error {
        ReplicationError::Connect { .. } | ReplicationError::Busy { .. } => {
            tonic::Status::unavailable(message)
        }
        ReplicationError::Query { source, .. } if source.is_closed() => {
            tonic::Status::unavailable(message)
        }
        ReplicationError::Query { .. } => tonic::Status::internal(message),
        ReplicationError::NotReady { .. }
        | ReplicationError::Refused { .. }
        | ReplicationError::Slot { .. } => tonic::Status::failed_precondition(message),
        ReplicationError::NoSlot { .. } => tonic::Status::not_found(message),
        ReplicationError::DrainTimeout { .. } => tonic::Status::deadline_exceeded(message),
        ReplicationError::BadRequest(_) => tonic::Status::invalid_argument(message),
    }
}

/// A superuser session on `database` of `server`.
pub(crate) async fn connect(
    server: &crate::config::PostgresqlServer,
    database: &str,
) -> Result<tokio_postgres::Client, ReplicationError> {
    crate::transfer::postgres::session::connect(server, database)
        .await
        .map_err(|source| ReplicationError::Connect {
            server: server.name.clone(),
            database: database.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_valid() {
        let a = Names::new("mig-1", "shop");
        assert_eq!(a, Names::new("mig-1", "shop"));
        assert_ne!(a.slot, Names::new("mig-1", "blog").slot);
        assert_ne!(a.slot, Names::new("mig-2", "shop").slot);
        for name in [
            &a.publication,
            &a.slot,
            &a.subscription,
            &a.role,
            &a.verify_slot,
        ] {
            assert!(check_object_name(name).is_ok(), "{name}");
        }
        assert!(check_object_name("Bad-Name").is_err());
    }
}
