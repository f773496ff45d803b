//! Replication from a source host's database server to a copy on this
//! host, keeping the copy converging while the account runs (*Migrate*).

pub mod mariadb;
