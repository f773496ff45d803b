//! Verification inside a migration's freeze of what changed since the last
//! verification, not of whole trees or tables, so that its cost follows the
//! changes and not the account's size (as Ghostferry's inline verifier).
//!
//! - [`files`]: the fingerprint of each path the last journal pass saw
//!   change, taken on one side, and the comparison of the two sides'
//!   fingerprints into a list of mismatches (`VerifyFiles`,
//!   [`files::answer`]), called inside the freeze.
//! - [`postgres`]: the touched keys read from a `test_decoding` slot's
//!   lines; [`postgres_rows`]: that slot, the rounds reading it, and the
//!   touched rows' fingerprints on each side and their comparison
//!   (`VerifyRows`), called at each converge round and inside the freeze.
//! - [`mariadb`]: the touched keys read from the source's binary log
//!   between two GTID positions (`mariadb-binlog`'s decoded rows), the
//!   query fingerprinting those rows on each side and the comparison of
//!   the two; [`mariadb_rows`]: the rounds on each side
//!   (`VerifyMariadbRows`), called at each converge round and inside the
//!   freeze.
//!
//! This room only reads the host; it never repairs what it finds.

pub mod files;
pub mod mariadb;
pub mod mariadb_rows;
pub mod postgres;
pub mod postgres_rows;
