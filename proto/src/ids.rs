//! The rules for the names both sides of the contract check: account
//! names, host ids, transfer (and copy) ids, and the one error a value that
//! breaks a rule becomes ([`FieldError`]).
//!
//! Owns: the characters, lengths and ranges of these names, and how a
//! refused value is quoted back. Each side parses a request's fields once,
//! where the request arrives (the controller's `ids`, the agent's `ids`),
//! and passes the parsed value on.
//!
//! Invariants: a [`FieldError`]'s message names the field and quotes at
//! most [`QUOTED_CHARS`] characters of the value, escaped (a NUL byte reads
//! `\0`, a newline `\n`), so an error never echoes a caller's megabyte
//! back; white space around a value is refused, never trimmed (`" bruno"`
//! is not `bruno`).

use std::fmt;

/// How many characters of a refused value its error quotes.
pub const QUOTED_CHARS: usize = 24;

/// A request field whose value breaks its rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field as the request names it (`account`, `spec.transfer_id`).
    pub field: String,
    /// What is wrong, with the quoted start of the value.
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &str, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    /// The field is empty and must not be.
    pub fn required(field: &str) -> FieldError {
        FieldError::new(field, "is required")
    }
}

/// `value`'s first [`QUOTED_CHARS`] characters, escaped and quoted, with
/// `…` when there was more: `"bruno\n"`, `"aaaaaaaaaaaaaaaaaaaaaaaa…"`.
pub fn quote(value: &str) -> String {
    let mut quoted = String::from("\"");
    for c in value.chars().take(QUOTED_CHARS) {
        quoted.extend(c.escape_debug());
    }
    if value.chars().nth(QUOTED_CHARS).is_some() {
        quoted.push('…');
    }
    quoted.push('"');
    quoted
}

/// The shape of a name: at most `max` bytes, each `allowed`; `words` says
/// the rule to the caller (`"1–32 characters of a-z, 0-9, '_' and '-'"`).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub max: usize,
    /// Whether byte `b` may stand at `index` of a value `len` bytes long.
    pub allowed: fn(index: usize, len: usize, b: u8) -> bool,
    pub words: &'static str,
}

impl Rule {
    /// Checks `value` of `field`: present, no surrounding white space, no
    /// control character, not longer than allowed, only allowed bytes. Each
    /// refusal says which of these it broke.
    pub fn check(&self, field: &str, value: &str) -> Result<(), FieldError> {
        if value.is_empty() {
            return Err(FieldError::required(field));
        }
        plain_text(field, value)?;
        if value.len() > self.max {
            return Err(FieldError::new(
                field,
                format!(
                    "must be {} ({} bytes given; got {})",
                    self.words,
                    value.len(),
                    quote(value)
                ),
            ));
        }
        let len = value.len();
        if !value
            .bytes()
            .enumerate()
            .all(|(index, b)| (self.allowed)(index, len, b))
        {
            return Err(FieldError::new(
                field,
                format!("must be {} (got {})", self.words, quote(value)),
            ));
        }
        Ok(())
    }
}

/// No white space around `value` and no control character in it (NUL,
/// newline, escape...): what every field, names and free text, keeps to.
pub fn plain_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(FieldError::new(
            field,
            format!(
                "must not start or end with white space (got {})",
                quote(value)
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!(
                "must not contain control characters such as NUL or a newline (got {})",
                quote(value)
            ),
        ));
    }
    Ok(())
}

/// Free text a person typed (a reason, a description): at most `max`
/// characters, plain text ([`plain_text`]); empty is allowed here.
pub fn free_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    plain_text(field, value)?;
    let chars = value.chars().count();
    if chars > max {
        return Err(FieldError::new(
            field,
            format!(
                "must be at most {max} characters ({chars} given; got {})",
                quote(value)
            ),
        ));
    }
    Ok(())
}

/// A system account name, as `useradd` takes it: 1–32 bytes of a-z, 0-9,
/// '_' and '-', starting with a letter or '_'.
pub const ACCOUNT_NAME: Rule = Rule {
    max: 32,
    allowed: |index, _, b| {
        b.is_ascii_lowercase() || b == b'_' || (index > 0 && (b.is_ascii_digit() || b == b'-'))
    },
    words: "1–32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'",
};

/// A host id: a DNS label (it is written in certificate names), 1–63
/// bytes of a-z, 0-9 and '-', not starting or ending with '-'.
pub const HOST_ID: Rule = Rule {
    max: 63,
    allowed: |index, len, b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || (b == b'-' && index > 0 && index + 1 < len)
    },
    words: "1–63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
};

/// A transfer or copy id: it names a directory on the target, so 1–128
/// bytes of letters, digits, '-' and '_'.
pub const TRANSFER_ID: Rule = Rule {
    max: 128,
    allowed: |_, _, b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
    words: "1–128 characters of A-Z, a-z, 0-9, '-' and '_'",
};

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses request field `field`, refused with a [`FieldError`]
            /// naming it when it breaks the rule.
            pub fn parse(field: &str, value: &str) -> Result<$name, FieldError> {
                $rule.check(field, value)?;
                Ok($name(value.to_owned()))
            }

            /// Whether `value` keeps the rule (for names read from disk).
            pub fn is_valid(value: &str) -> bool {
                $rule.check("", value).is_ok()
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
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

name_type!(
    /// An account's system user name ([`ACCOUNT_NAME`]).
    AccountName,
    ACCOUNT_NAME
);
name_type!(
    /// A host's id ([`HOST_ID`]).
    HostId,
    HOST_ID
);
name_type!(
    /// A transfer's (or a copy's) id ([`TRANSFER_ID`]).
    TransferId,
    TRANSFER_ID
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_keep_the_system_user_rule() {
        for good in ["bruno", "_svc", "a", "nv_alice-2", &"a".repeat(32)] {
            assert!(AccountName::parse("account", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Bruno",
            "2bruno",
            "-bruno",
            "bru no",
            "bruno\n",
            " bruno",
            "bru\0no",
            "bruné",
            &"a".repeat(33),
        ] {
            let error = AccountName::parse("account", bad).expect_err(bad);
            assert_eq!(error.field, "account");
            assert!(error.to_string().starts_with("account: "), "{error}");
        }
    }

    #[test]
    fn each_refusal_says_which_rule_it_broke() {
        let message = |value: &str| {
            AccountName::parse("account", value)
                .expect_err(value)
                .to_string()
        };
        assert_eq!(message(""), "account: is required");
        assert_eq!(
            message(" bruno"),
            "account: must not start or end with white space (got \" bruno\")"
        );
        assert_eq!(
            message("bruno\n"),
            "account: must not start or end with white space (got \"bruno\\n\")"
        );
        assert_eq!(
            message("bru\0no"),
            "account: must not contain control characters such as NUL or a newline (got \"bru\\0no\")"
        );
        assert_eq!(
            message("Bruno"),
            "account: must be 1–32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_' (got \"Bruno\")"
        );
    }

    #[test]
    fn a_megabyte_is_quoted_by_its_first_characters() {
        let huge = "b".repeat(1 << 20);
        let message = AccountName::parse("account", &huge)
            .expect_err("too long")
            .to_string();
        assert!(message.len() < 200, "{} bytes: {message}", message.len());
        assert!(message.contains("1048576 bytes given"), "{message}");
        assert!(
            message.ends_with(&format!(
                "(1048576 bytes given; got \"{}…\")",
                "b".repeat(24)
            )),
            "{message}"
        );
        // Multi-byte characters are cut on a character boundary.
        assert_eq!(quote(&"é".repeat(30)), format!("\"{}…\"", "é".repeat(24)));
    }

    #[test]
    fn host_ids_are_dns_labels() {
        for good in ["host-a", "a", "h1", &"a".repeat(63)] {
            assert!(HostId::parse("id", good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a", "a-", "Host", "a.b", "a_b", &"a".repeat(64), "a\0"] {
            assert!(HostId::parse("id", bad).is_err(), "{bad:?}");
        }
        // The same rule as certificate names.
        for value in ["host-a", "-a", "a-", "Host", &"a".repeat(64)] {
            assert_eq!(
                HostId::is_valid(value),
                crate::identity::validate_host_id(value).is_ok(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn transfer_ids_name_directories() {
        for good in ["t0123abcd-g1", "A_b-9", &"x".repeat(128)] {
            assert!(TransferId::is_valid(good), "{good:?}");
        }
        for bad in ["", "../x", "a/b", "a.b", ".", &"x".repeat(129), "a\0"] {
            assert!(!TransferId::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn free_text_may_be_empty_but_not_padded_or_long() {
        assert!(free_text("reason", "", 10).is_ok());
        assert!(free_text("reason", "disk died", 10).is_ok());
        assert!(free_text("reason", "disk died ", 10).is_err());
        assert!(free_text("reason", "disk\0died", 10).is_err());
        assert!(free_text("reason", "ééééééééééé", 10).is_err());
        assert!(free_text("reason", "éééééééééé", 10).is_ok());
    }
}
