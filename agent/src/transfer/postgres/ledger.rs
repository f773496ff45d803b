//! Which roles of a PostgreSQL server copies created or took, and for which
//! account: the table `navette.copy_roles` in the server's `postgres`
//! database (MariaDB keeps the same record in `mysql.navette_copy_users`,
//! [`crate::transfer::mariadb`]).
//!
//! A PostgreSQL server's roles are global to it: two customers on two old
//! hosts may both have a role `wp`, and on one target server only one of
//! them can have it. The ledger says whose it is. The record lives with the
//! roles it describes (a server restored from a backup, or wiped, takes its
//! record along), in a schema owned by the server's administrator to which
//! PUBLIC has no access, so customers, who may connect to `postgres`,
//! cannot read or change it. Every statement here is built by Navette, on
//! the administrator's session, with the names as parameters.
//!
//! *Invariant*: a copy of account A may create, alter or grant a role only
//! if the ledger gives the role to A, and it claims a role (a row written
//! with the role as primary key, so of two copies claiming one name at once
//! exactly one wins) before creating it. A role that exists on the server
//! without a row (the operator's, `postgres`, roles made by hand) or whose
//! row is another account's is never touched, whatever the source names. A
//! crash between claim and creation leaves a row for a role that does not
//! exist, which the next copy of the same account simply creates; it never
//! leaves a role a copy created without a row. Removal
//! ([`crate::transfer::removal`]) forgets a role's row once the role is
//! dropped.

use std::collections::HashMap;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// The ledger's schema, in the server's `postgres` database.
pub const SCHEMA: &str = "navette";

/// The ledger's table, qualified.
pub const TABLE: &str = "navette.copy_roles";

/// Whether the ledger exists and is the administrator's: the schema and
/// the table owned by a superuser. A ledger someone else owns (an operator
/// granted CREATE on `postgres` to a customer) could give that customer
/// anyone's role; it is read as no ledger at all, and [`ensure`] refuses it.
pub const TRUSTED: &str = "SELECT EXISTS (SELECT 1 FROM pg_class c \
       JOIN pg_namespace n ON n.oid = c.relnamespace \
       JOIN pg_roles t ON t.oid = c.relowner JOIN pg_roles s ON s.oid = n.nspowner \
       WHERE c.oid = to_regclass('navette.copy_roles') AND t.rolsuper AND s.rolsuper)";

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS navette; \
     REVOKE ALL ON SCHEMA navette FROM PUBLIC; \
     CREATE TABLE IF NOT EXISTS navette.copy_roles (\
       role text PRIMARY KEY, \
       account text NOT NULL, \
       transfer text NOT NULL, \
       created timestamptz NOT NULL DEFAULT now()); \
     REVOKE ALL ON navette.copy_roles FROM PUBLIC; \
     COMMENT ON TABLE navette.copy_roles IS 'roles created or taken by Navette copies, by account'; \
     DO $$ BEGIN IF NOT (SELECT EXISTS (SELECT 1 FROM pg_class c \
       JOIN pg_namespace n ON n.oid = c.relnamespace \
       JOIN pg_roles t ON t.oid = c.relowner JOIN pg_roles s ON s.oid = n.nspowner \
       WHERE c.oid = to_regclass('navette.copy_roles') AND t.rolsuper AND s.rolsuper)) THEN \
       RAISE EXCEPTION 'the role ledger navette.copy_roles (database postgres) is not owned by a superuser; an operator must look at it before copies use this server'; \
     END IF; END $$";

/// Creates the ledger if it is missing (idempotent), and refuses one that
/// is not the administrator's ([`TRUSTED`]). `admin` is a superuser
/// session on the server's `postgres` database. Two copies
/// creating it at once may collide in the catalogue; the loser tries again
/// and finds it.
pub async fn ensure(admin: &Client) -> Result<(), tokio_postgres::Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match admin.batch_execute(CREATE).await {
            Ok(()) => return Ok(()),
            Err(error)
                if attempts < 3
                    && matches!(
                        error.code(),
                        Some(&SqlState::UNIQUE_VIOLATION) | Some(&SqlState::DUPLICATE_OBJECT)
                    ) => {}
            Err(error) => return Err(error),
        }
    }
}

/// The account the ledger gives each of `roles`, for those it names. A
/// server without a ledger (or with one it cannot trust, [`TRUSTED`]) has
/// given no role to anyone.
pub async fn accounts_of(
    admin: &Client,
    roles: &[String],
) -> Result<HashMap<String, String>, tokio_postgres::Error> {
    let exists: bool = admin.query_one(TRUSTED, &[]).await?.try_get(0)?;
    if !exists || roles.is_empty() {
        return Ok(HashMap::new());
    }
    let mut accounts = HashMap::new();
    for row in admin
        .query(
            "SELECT role, account FROM navette.copy_roles WHERE role = ANY($1)",
            &[&roles],
        )
        .await?
    {
        accounts.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(accounts)
}

/// Claims `role` for `account` (transfer `transfer_id`): writes its row
/// unless one exists, and answers the account the role belongs to now,
/// which is `account` exactly when the claim holds. The ledger must exist
/// ([`ensure`]).
pub async fn claim(
    admin: &Client,
    role: &str,
    account: &str,
    transfer_id: &str,
) -> Result<String, tokio_postgres::Error> {
    admin
        .execute(
            "INSERT INTO navette.copy_roles (role, account, transfer) VALUES ($1, $2, $3) \
             ON CONFLICT (role) DO NOTHING",
            &[&role, &account, &transfer_id],
        )
        .await?;
    admin
        .query_one(
            "SELECT account FROM navette.copy_roles WHERE role = $1",
            &[&role],
        )
        .await?
        .try_get(0)
}

/// Forgets `role`'s row, if it is `account`'s (idempotent; a server
/// without a ledger has nothing to forget).
pub async fn forget(
    admin: &Client,
    role: &str,
    account: &str,
) -> Result<(), tokio_postgres::Error> {
    let exists: bool = admin.query_one(TRUSTED, &[]).await?.try_get(0)?;
    if exists {
        admin
            .execute(
                "DELETE FROM navette.copy_roles WHERE role = $1 AND account = $2",
                &[&role, &account],
            )
            .await?;
    }
    Ok(())
}
