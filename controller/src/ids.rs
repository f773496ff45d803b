//! The controller's identifiers and the rule of every request field, parsed
//! once where a request arrives (the `api` handlers) and passed on typed.
//!
//! Owns: the names only the controller takes (request ids, test ids,
//! migration ids, pool names, join token ids), the free text, documents and
//! numbers of its requests (reasons, descriptions, CSRs, time-to-live,
//! declared disk), and the conversion of a [`FieldError`] into the
//! controller's [`Error`]. The names agents check too (account names, host
//! ids, transfer ids) and the way a refusal quotes a value are
//! `navette_proto::ids`, re-exported here.
//!
//! Invariants: no value reaches the database or a log line before it kept
//! its rule, so a NUL byte or a megabyte is an `INVALID_ARGUMENT` naming
//! its field, never a database error; white space around a value is
//! refused, never trimmed; an empty optional field means "absent" and any
//! other value must keep the rule.

use std::fmt;

use navette_proto::ids::free_text;
pub use navette_proto::ids::{AccountName, FieldError, HostId, Rule, TransferId, quote};

use crate::error::Error;

impl From<FieldError> for Error {
    fn from(error: FieldError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

/// The longest time-to-live of a test copy, in seconds: 90 days.
pub const MAX_TEST_TTL_SECS: u32 = 90 * 86_400;
/// The longest time-to-live of a join token, in seconds: 7 days.
pub const MAX_JOIN_TOKEN_TTL_SECS: u32 = 7 * 86_400;
/// The largest declared disk, in bytes: 1 EiB (stored as a signed 64-bit
/// number, and no host is near it).
pub const MAX_DECLARED_DISK_BYTES: u64 = 1 << 60;
/// The longest reason or description, in characters.
pub const MAX_TEXT_CHARS: usize = 500;
/// The largest CSR, in bytes (a P-256 or RSA-4096 CSR is a few KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses request field `field`.
            pub fn parse(field: &str, value: &str) -> Result<$name, FieldError> {
                $rule.check(field, value)?;
                Ok($name(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A client-chosen request id (a UUID, `pool-1`): 1–128 bytes of letters,
/// digits, '-', '_', '.' and ':'.
pub const REQUEST_ID: Rule = Rule {
    max: 128,
    allowed: |_, _, b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'),
    words: "1–128 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'",
};

/// A test id as the controller makes them (`t` and 16 hex digits), with
/// room: 1–64 bytes of a-z, 0-9 and '-'.
pub const TEST_ID: Rule = Rule {
    max: 64,
    allowed: |_, _, b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
    words: "1–64 characters of a-z, 0-9 and '-'",
};

/// A migration id, as the catalogue's files name them: 1–63 bytes of a-z,
/// 0-9, '-' and '.'.
pub const MIGRATION_ID: Rule = Rule {
    max: 63,
    allowed: |_, _, b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.',
    words: "1–63 characters of a-z, 0-9, '-' and '.'",
};

/// A host pool's name: 1–63 bytes of a-z, 0-9, '-' and '_'.
pub const POOL_NAME: Rule = Rule {
    max: 63,
    allowed: |_, _, b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_',
    words: "1–63 characters of a-z, 0-9, '-' and '_'",
};

/// A join token's id (16 hex digits), with room: 1–64 bytes of 0-9, a-f.
pub const JOIN_TOKEN_ID: Rule = Rule {
    max: 64,
    allowed: |_, _, b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
    words: "1–64 characters of 0-9 and a-f",
};

/// A join token's secret as `CreateJoinToken` gave it: `<id>.<hex>`,
/// 1–256 bytes of 0-9, a-f and '.'.
pub const JOIN_TOKEN_SECRET: Rule = Rule {
    max: 256,
    allowed: |_, _, b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'.',
    words: "the secret CreateJoinToken returned (1–256 characters of 0-9, a-f and '.')",
};

/// An agent's endpoint as it reports it (`192.0.2.10:7443`, `[::1]:7443`):
/// 0–255 bytes, no white space; empty keeps the one known.
pub const AGENT_ENDPOINT: Rule = Rule {
    max: 255,
    allowed: |_, _, b| b.is_ascii_graphic(),
    words: "an address and port of at most 255 characters, without spaces",
};

/// An inventory digest: 1–128 hex digits (a SHA-256 is 64).
pub const DIGEST: Rule = Rule {
    max: 128,
    allowed: |_, _, b| b.is_ascii_hexdigit(),
    words: "1–128 hex digits",
};

name_type!(
    /// A client-chosen request id ([`REQUEST_ID`]).
    RequestId,
    REQUEST_ID
);
name_type!(
    /// A test's id ([`TEST_ID`]).
    TestId,
    TEST_ID
);
name_type!(
    /// A catalogue migration's id ([`MIGRATION_ID`]).
    MigrationId,
    MIGRATION_ID
);
name_type!(
    /// A host pool's name ([`POOL_NAME`]).
    PoolName,
    POOL_NAME
);
name_type!(
    /// A join token's id ([`JOIN_TOKEN_ID`]).
    JoinTokenId,
    JOIN_TOKEN_ID
);

/// A host's configuration class (`TransitPool/SetConfigurationClass`):
/// 1–63 bytes of a-z, 0-9, '-' and '_'.
pub const CONFIGURATION_CLASS: Rule = POOL_NAME;

name_type!(
    /// A host's configuration class ([`CONFIGURATION_CLASS`]).
    ConfigurationClass,
    CONFIGURATION_CLASS
);
name_type!(
    /// A transit allocation's id (`a` and 16 hex digits, made by the
    /// controller), with the rule of a test id ([`TEST_ID`]).
    AllocationId,
    TEST_ID
);

/// The largest price a transit request takes, in minor units (10^12: ten
/// billion euros), so that no charge can overflow.
pub const MAX_PRICE_MINOR_UNITS: u64 = 1_000_000_000_000;

/// An ISO 4217 currency code: three upper-case letters.
pub fn currency<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value)
    } else if value.is_empty() {
        Err(FieldError::required(field))
    } else {
        Err(FieldError::new(
            field,
            format!(
                "must be an ISO 4217 code of three upper-case letters, such as EUR (got {})",
                quote(value)
            ),
        ))
    }
}

/// A price in minor units: at most [`MAX_PRICE_MINOR_UNITS`].
pub fn price_minor_units(field: &str, value: u64) -> Result<u64, FieldError> {
    if value <= MAX_PRICE_MINOR_UNITS {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("must be at most {MAX_PRICE_MINOR_UNITS} minor units, got {value}"),
        ))
    }
}

/// An optional field: empty is absent, anything else is parsed by `parse`.
pub fn optional<T>(
    field: &str,
    value: &str,
    parse: impl FnOnce(&str, &str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(field, value).map(Some)
    }
}

/// Free text a person typed: at most [`MAX_TEXT_CHARS`] characters, no
/// control characters, no surrounding white space; may be empty.
pub fn text<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    free_text(field, value, MAX_TEXT_CHARS)?;
    Ok(value)
}

/// A join token's secret ([`JOIN_TOKEN_SECRET`]).
pub fn join_token_secret<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    JOIN_TOKEN_SECRET.check(field, value)?;
    Ok(value)
}

/// An agent's endpoint ([`AGENT_ENDPOINT`]); empty is allowed.
pub fn agent_endpoint<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if !value.is_empty() {
        AGENT_ENDPOINT.check(field, value)?;
    }
    Ok(value)
}

/// An inventory digest ([`DIGEST`]); empty is allowed (none yet).
pub fn digest<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if !value.is_empty() {
        DIGEST.check(field, value)?;
    }
    Ok(value)
}

/// A PEM certificate signing request: 1–[`MAX_CSR_BYTES`] bytes of ASCII
/// text (lines end with `\n` or `\r\n`, so white space around it is fine
/// here, and no other control character is).
pub fn csr_pem<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::required(field));
    }
    if value.len() > MAX_CSR_BYTES {
        return Err(FieldError::new(
            field,
            format!(
                "must be a PEM CSR of at most {MAX_CSR_BYTES} bytes ({} bytes given; got {})",
                value.len(),
                quote(value)
            ),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return Err(FieldError::new(
            field,
            format!(
                "must be a PEM CSR: ASCII text without control characters such as NUL (got {})",
                quote(value)
            ),
        ));
    }
    Ok(value)
}

/// A time-to-live in seconds: 0 is `default`, anything else at most `max`.
pub fn ttl_seconds(field: &str, value: u32, default: u64, max: u32) -> Result<u64, FieldError> {
    match value {
        0 => Ok(default),
        ttl if ttl <= max => Ok(u64::from(ttl)),
        ttl => Err(FieldError::new(
            field,
            format!(
                "must be at most {max} seconds ({}), or 0 for the default (got {ttl})",
                human_seconds(max)
            ),
        )),
    }
}

fn human_seconds(seconds: u32) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{s} seconds"),
    }
}

/// A declared disk size: 0 is "none", anything else at most
/// [`MAX_DECLARED_DISK_BYTES`].
pub fn declared_disk_bytes(field: &str, value: u64) -> Result<Option<u64>, FieldError> {
    match value {
        0 => Ok(None),
        bytes if bytes <= MAX_DECLARED_DISK_BYTES => Ok(Some(bytes)),
        bytes => Err(FieldError::new(
            field,
            format!("must be at most {MAX_DECLARED_DISK_BYTES} bytes (1 EiB), got {bytes}"),
        )),
    }
}

/// A string an agent reports in its inventory (a database's name, a
/// server's version, a home directory): at most `max` bytes and no control
/// character; it may be empty. Agents are not trusted to send clean text.
pub fn reported(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!(
                "must be at most {max} bytes ({} bytes given; got {})",
                value.len(),
                quote(value)
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!(
                "must not contain control characters such as NUL (got {})",
                quote(value)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_take_uuids_and_short_names() {
        for good in ["4f1c2a9e-0b7d-4c55-9a3e-2f6d8b1c0e77", "pool-1", "r_1.2:3"] {
            assert!(RequestId::parse("request_id", good).is_ok(), "{good:?}");
        }
        let huge = "r".repeat(1 << 20);
        for bad in ["", " r1", "r1\n", "r\0x", "r 1", "r/1", huge.as_str()] {
            let error = RequestId::parse("request_id", bad).expect_err(bad);
            let message = error.to_string();
            assert!(message.starts_with("request_id: "), "{message}");
            assert!(message.len() < 200, "{message}");
        }
    }

    #[test]
    fn test_migration_and_pool_names() {
        assert!(TestId::parse("id", "t0123456789abcdef").is_ok());
        assert!(TestId::parse("id", "T01").is_err());
        assert!(TestId::parse("id", "t01\0").is_err());
        assert!(MigrationId::parse("migration_id", "postgresql-15-to-18").is_ok());
        assert!(MigrationId::parse("migration_id", "php-8.1-to-8.3").is_ok());
        assert!(MigrationId::parse("migration_id", "postgresql 15").is_err());
        assert!(PoolName::parse("pool", "paris").is_ok());
        assert!(PoolName::parse("pool", "Paris").is_err());
        assert!(PoolName::parse("pool", &"p".repeat(64)).is_err());
        assert!(JoinTokenId::parse("id", "00ff12ab34cd56ef").is_ok());
        assert!(JoinTokenId::parse("id", "00FF").is_err());
    }

    #[test]
    fn optional_fields_are_absent_when_empty_and_checked_otherwise() {
        assert_eq!(optional("pool", "", PoolName::parse), Ok(None));
        assert_eq!(
            optional("pool", "paris", PoolName::parse)
                .expect("a pool")
                .map(|p| p.to_string()),
            Some("paris".to_owned())
        );
        let error = optional("pool", " paris", PoolName::parse).expect_err("padded");
        assert_eq!(error.field, "pool");
    }

    #[test]
    fn time_to_live_has_a_default_and_a_maximum() {
        assert_eq!(
            ttl_seconds("ttl_seconds", 0, 604_800, MAX_TEST_TTL_SECS),
            Ok(604_800)
        );
        assert_eq!(
            ttl_seconds("ttl_seconds", 60, 604_800, MAX_TEST_TTL_SECS),
            Ok(60)
        );
        assert_eq!(
            ttl_seconds("ttl_seconds", MAX_TEST_TTL_SECS, 1, MAX_TEST_TTL_SECS),
            Ok(u64::from(MAX_TEST_TTL_SECS))
        );
        let error = ttl_seconds("ttl_seconds", u32::MAX, 1, MAX_TEST_TTL_SECS).expect_err("2163");
        assert_eq!(
            error.to_string(),
            "ttl_seconds: must be at most 7776000 seconds (90 days), or 0 for the default (got 4294967295)"
        );
        assert!(
            ttl_seconds(
                "ttl_seconds",
                MAX_JOIN_TOKEN_TTL_SECS + 1,
                1,
                MAX_JOIN_TOKEN_TTL_SECS
            )
            .is_err()
        );
    }

    #[test]
    fn declared_disk_fits_the_database() {
        assert_eq!(declared_disk_bytes("declared_disk_bytes", 0), Ok(None));
        assert_eq!(
            declared_disk_bytes("declared_disk_bytes", 500 << 30),
            Ok(Some(500 << 30))
        );
        assert!(declared_disk_bytes("declared_disk_bytes", u64::MAX).is_err());
        assert!(i64::try_from(MAX_DECLARED_DISK_BYTES).is_ok());
    }

    #[test]
    fn documents_and_reports() {
        let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        assert!(csr_pem("csr_pem", csr).is_ok());
        assert!(csr_pem("csr_pem", "").is_err());
        assert!(csr_pem("csr_pem", "a\0b").is_err());
        assert!(csr_pem("csr_pem", &"A".repeat(MAX_CSR_BYTES + 1)).is_err());
        assert!(join_token_secret("token", "00ff.abcd").is_ok());
        assert!(join_token_secret("token", "00ff.abcd\n").is_err());
        assert!(agent_endpoint("agent_endpoint", "").is_ok());
        assert!(agent_endpoint("agent_endpoint", "192.0.2.10:7443").is_ok());
        assert!(agent_endpoint("agent_endpoint", "192.0.2.10:7443\0").is_err());
        assert!(digest("inventory_digest", &"ab".repeat(32)).is_ok());
        assert!(digest("inventory_digest", "xyz").is_err());
        assert!(reported("databases.name", "shop", 10).is_ok());
        assert!(reported("databases.name", "sh\0op", 10).is_err());
        assert!(reported("databases.name", &"s".repeat(11), 10).is_err());
        assert!(text("reason", "disk died").is_ok());
        assert!(text("reason", &"x".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }
}
