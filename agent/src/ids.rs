//! The identifiers the agent acts on, checked once where a call arrives
//! ([`crate::server`]) and again, as a last guard, where an id names a
//! file or a directory (grants, transfer records, copies, journals).
//!
//! Owns: which fields of a [`TransferSpec`] must keep which rule, and the
//! one test of a transfer id used everywhere in the agent
//! ([`is_transfer_id`]). The rules themselves (characters, lengths) are
//! `navette_proto::ids`, shared with the controller, so both sides agree
//! on what an account name or a transfer id is.
//!
//! Invariant: an id that breaks its rule never reaches the file system: a
//! transfer id is a path component only after [`is_transfer_id`] said yes.

pub use navette_proto::ids::{AccountName, FieldError, HostId, TransferId};
use navette_proto::ids::{free_text, plain_text};
use navette_proto::v1::{DatabaseCopy, TransferSpec};

/// Whether `id` is a transfer (or copy) id: 1–128 bytes of letters,
/// digits, '-' and '_', so that it is a safe path component.
pub fn is_transfer_id(id: &str) -> bool {
    TransferId::is_valid(id)
}

/// The longest home path or database name a spec may carry, in bytes.
const MAX_NAME_BYTES: usize = 4096;

/// Checks the fields of `spec` (field names prefixed with `prefix`, such
/// as `spec.`): the transfer id, copy id and account keep their rules, host
/// ids are host ids, and the homes and database names are plain text.
pub fn check_spec(prefix: &str, spec: &TransferSpec) -> Result<(), FieldError> {
    let field = |name: &str| format!("{prefix}{name}");
    TransferId::parse(&field("transfer_id"), &spec.transfer_id)?;
    if !spec.copy_id.is_empty() {
        TransferId::parse(&field("copy_id"), &spec.copy_id)?;
    }
    AccountName::parse(&field("account"), &spec.account)?;
    for (name, value) in [
        ("source_host_id", &spec.source_host_id),
        ("target_host_id", &spec.target_host_id),
    ] {
        if !value.is_empty() {
            HostId::parse(&field(name), value)?;
        }
    }
    for (name, value) in [
        ("source_endpoint", &spec.source_endpoint),
        ("source_home", &spec.source_home),
        ("target_home", &spec.target_home),
    ] {
        text(&field(name), value)?;
    }
    let databases = |name: &str, copies: &[DatabaseCopy]| -> Result<(), FieldError> {
        for copy in copies {
            for (part, value) in [
                ("source_server", &copy.source_server),
                ("source_database", &copy.source_database),
                ("target_server", &copy.target_server),
                ("target_database", &copy.target_database),
            ] {
                text(&field(&format!("{name}.{part}")), value)?;
            }
        }
        Ok(())
    };
    databases("postgresql", &spec.postgresql)?;
    databases("mariadb", &spec.mariadb)?;
    Ok(())
}

/// Plain text of at most [`MAX_NAME_BYTES`] (empty allowed).
fn text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    plain_text(field, value)?;
    free_text(field, value, MAX_NAME_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TransferSpec {
        TransferSpec {
            transfer_id: "t0123456789abcdef-g1".into(),
            account: "bruno".into(),
            source_host_id: "host-a".into(),
            source_endpoint: "192.0.2.10:7443".into(),
            target_host_id: "test-1".into(),
            source_home: "/home/bruno".into(),
            postgresql: vec![DatabaseCopy {
                source_server: "main".into(),
                source_database: "shop".into(),
                target_server: "main".into(),
                target_database: "shop".into(),
            }],
            ..TransferSpec::default()
        }
    }

    #[test]
    fn a_spec_as_the_controller_sends_it_is_taken() {
        assert_eq!(check_spec("spec.", &spec()), Ok(()));
    }

    #[test]
    fn each_field_that_breaks_its_rule_is_named() {
        let refused = |change: fn(&mut TransferSpec)| {
            let mut spec = spec();
            change(&mut spec);
            check_spec("spec.", &spec).expect_err("refused").field
        };
        assert_eq!(
            refused(|s| s.transfer_id = "../etc".into()),
            "spec.transfer_id"
        );
        assert_eq!(
            refused(|s| s.transfer_id = String::new()),
            "spec.transfer_id"
        );
        assert_eq!(refused(|s| s.copy_id = "a b".into()), "spec.copy_id");
        assert_eq!(refused(|s| s.account = " bruno".into()), "spec.account");
        assert_eq!(refused(|s| s.account = "bruno\n".into()), "spec.account");
        assert_eq!(
            refused(|s| s.target_host_id = "Host".into()),
            "spec.target_host_id"
        );
        assert_eq!(
            refused(|s| s.source_home = "/home/b\0".into()),
            "spec.source_home"
        );
        assert_eq!(
            refused(|s| s.postgresql[0].target_database = "x".repeat(5000)),
            "spec.postgresql.target_database"
        );
    }

    #[test]
    fn transfer_ids_are_safe_path_components() {
        assert!(is_transfer_id("t0123456789abcdef-g12"));
        for bad in ["", ".", "..", "a/b", "a\0", &"x".repeat(129)] {
            assert!(!is_transfer_id(bad), "{bad:?}");
        }
    }
}
