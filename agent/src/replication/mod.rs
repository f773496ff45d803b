//! Replication that keeps a target copy of an account's databases
//! converging with the source while the account runs, so that a migration
//! freezes it only for what is left. One module per database engine; each
//! owns the objects it creates on the servers (publications, slots,
//! subscriptions, replication roles, named from the migration id) and
//! nothing else: customer data and schema are never changed, except where
//! a module's doc says so.

pub mod mariadb;
pub mod postgres;
