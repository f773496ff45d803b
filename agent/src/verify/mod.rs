//! Verification inside a migration's freeze of what changed since the last
//! verification, not of whole trees or tables, so that its cost follows the
//! changes and not the account's size (as Ghostferry's inline verifier).
//!
//! So far: [`files`], the fingerprint of each path the last journal pass
//! saw change, taken on one side, and the comparison of the two sides'
//! fingerprints into a list of mismatches; [`postgres`], the touched keys
//! read from a `test_decoding` slot's lines and the query fingerprinting
//! those rows on each side; [`mariadb`], the touched keys read from the
//! source's binary log between two GTID positions (`mariadb-binlog`'s
//! decoded rows), the query fingerprinting those rows on each side and
//! the comparison of the two. The files' part is served by `VerifyFiles`
//! ([`files::answer`]) and called from the freeze by the controller; the
//! PostgreSQL slot itself and the rpc and freeze calls of the MariaDB
//! part are not written yet.
//!
//! This room only reads the host; it never repairs what it finds.

pub mod files;
pub mod mariadb;
pub mod postgres;
