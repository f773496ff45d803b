//! What a site is, the checks every site passes before anything is written
//! for it, and the host's site definitions (`[sites] definitions_dir`).
//!
//! A site comes from a definition file the panel wrote, or from a
//! `StartSites` call carrying another host's inventory: both are customer
//! input. [`Site::check`] is the one gate: domains are lower-case LDH host
//! names (so a name can never carry nginx syntax), the document root is a
//! relative path of plain components inside the home, the runtime is one
//! this agent runs. Nothing else reaches the server block or pool writers.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Most sites one account may have on a host.
pub const MAX_SITES: usize = 64;
/// Most domains one site may answer to.
pub const MAX_DOMAINS: usize = 32;

/// What runs a site's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// PHP through the account's FPM pool; other files served as they are.
    Php,
    /// Files served as they are; no pool needed.
    Static,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Php => "php",
            Runtime::Static => "static",
        }
    }

    pub fn parse(text: &str) -> Option<Runtime> {
        match text {
            "php" | "" => Some(Runtime::Php),
            "static" => Some(Runtime::Static),
            _ => None,
        }
    }
}

/// A checked site.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    /// Checked host names, the main one first, no duplicates.
    pub domains: Vec<String>,
    /// Relative to the home, plain components only (`www`, `sites/blog`).
    pub document_root: PathBuf,
    pub runtime: Runtime,
}

/// Why a site (or a definition file) was refused. The message names the
/// account and the offending value, and says what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(
        "account {account}: domain {domain:?} is not a host name: use lower-case labels of a-z, 0-9 and '-' (not at either end), 1 to 63 characters each, separated by '.', 253 characters at most"
    )]
    BadDomain { account: String, domain: String },
    #[error("account {account}: a site needs at least one domain")]
    NoDomain { account: String },
    #[error("account {account}: domain {domain} is listed twice")]
    DuplicateDomain { account: String, domain: String },
    #[error("account {account}: more than {max} {what}")]
    TooMany {
        account: String,
        what: &'static str,
        max: usize,
    },
    #[error(
        "account {account}: document root {root:?} leaves the home: give a path relative to the home, without '..', '.' or a leading '/'"
    )]
    BadDocumentRoot { account: String, root: String },
    #[error("account {account}: runtime {runtime:?} is not one this host runs (php, static)")]
    BadRuntime { account: String, runtime: String },
    #[error("site definitions of account {account} ({}): {message}", path.display())]
    Definition {
        account: String,
        path: PathBuf,
        message: String,
    },
}

/// Whether `domain` is a lower-case LDH host name (RFC 1123 labels).
pub fn is_valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 253 {
        return false;
    }
    domain.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    })
}

impl Site {
    /// Checks a site as given (by a definition file or a call).
    pub fn check(
        account: &str,
        domains: &[String],
        document_root: &str,
        runtime: &str,
    ) -> Result<Site, SiteError> {
        if domains.is_empty() {
            return Err(SiteError::NoDomain {
                account: account.to_owned(),
            });
        }
        if domains.len() > MAX_DOMAINS {
            return Err(SiteError::TooMany {
                account: account.to_owned(),
                what: "domains in one site",
                max: MAX_DOMAINS,
            });
        }
        let mut seen = BTreeSet::new();
        for domain in domains {
            if !is_valid_domain(domain) {
                return Err(SiteError::BadDomain {
                    account: account.to_owned(),
                    domain: domain.clone(),
                });
            }
            if !seen.insert(domain.as_str()) {
                return Err(SiteError::DuplicateDomain {
                    account: account.to_owned(),
                    domain: domain.clone(),
                });
            }
        }
        let document_root = check_document_root(account, document_root)?;
        let runtime = Runtime::parse(runtime).ok_or_else(|| SiteError::BadRuntime {
            account: account.to_owned(),
            runtime: runtime.to_owned(),
        })?;
        Ok(Site {
            domains: domains.to_vec(),
            document_root,
            runtime,
        })
    }

    /// The protobuf form, as the inventory and the RPCs carry it.
    pub fn to_proto(&self) -> navette_proto::v1::Site {
        navette_proto::v1::Site {
            domains: self.domains.clone(),
            document_root: self.document_root.display().to_string(),
            runtime: self.runtime.as_str().to_owned(),
        }
    }

    /// Checks a site received in a call.
    pub fn from_proto(account: &str, site: &navette_proto::v1::Site) -> Result<Site, SiteError> {
        Site::check(account, &site.domains, &site.document_root, &site.runtime)
    }
}

/// Checks every site of one account together: each on its own, at most
/// [`MAX_SITES`], and no domain in two sites.
pub fn check_all(account: &str, sites: &[Site]) -> Result<(), SiteError> {
    if sites.len() > MAX_SITES {
        return Err(SiteError::TooMany {
            account: account.to_owned(),
            what: "sites",
            max: MAX_SITES,
        });
    }
    let mut seen = BTreeSet::new();
    for domain in sites.iter().flat_map(|site| &site.domains) {
        if !seen.insert(domain.as_str()) {
            return Err(SiteError::DuplicateDomain {
                account: account.to_owned(),
                domain: domain.clone(),
            });
        }
    }
    Ok(())
}

/// A relative path of plain components (empty or `.`: the home itself is
/// refused too: a home holds private files next to its sites).
fn check_document_root(account: &str, root: &str) -> Result<PathBuf, SiteError> {
    let bad = || SiteError::BadDocumentRoot {
        account: account.to_owned(),
        root: root.to_owned(),
    };
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() || trimmed.len() > 1024 {
        return Err(bad());
    }
    // nginx syntax and control characters have no place in a path the
    // agent writes into a server block.
    let unsafe_char = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\' | '$')
    };
    if trimmed.chars().any(unsafe_char) {
        return Err(bad());
    }
    let path = Path::new(trimmed);
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            _ => return Err(bad()),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(clean)
}

/// A definition file as written (`<account>.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    #[serde(default)]
    site: Vec<SiteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    domains: Vec<String>,
    #[serde(default = "default_document_root")]
    document_root: String,
    #[serde(default = "default_runtime")]
    runtime: String,
}

fn default_document_root() -> String {
    "www".to_owned()
}
fn default_runtime() -> String {
    "php".to_owned()
}

/// The file holding `account`'s definitions.
pub fn definition_path(dir: &Path, account: &str) -> PathBuf {
    dir.join(format!("{account}.toml"))
}

/// `account`'s sites as the host's definitions list them: none when it has
/// no file; an error naming the file when the file is unreadable or a site
/// in it is refused.
pub fn read_account(dir: &Path, account: &str) -> Result<Vec<Site>, SiteError> {
    let path = definition_path(dir, account);
    let definition_error = |message: String| SiteError::Definition {
        account: account.to_owned(),
        path: path.clone(),
        message,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(definition_error(format!("cannot read it: {error}"))),
    };
    let file: DefinitionFile =
        toml::from_str(&text).map_err(|error| definition_error(error.message().to_owned()))?;
    let sites = file
        .site
        .iter()
        .map(|entry| {
            Site::check(
                account,
                &entry.domains,
                &entry.document_root,
                &entry.runtime,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_all(account, &sites)?;
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(list: &[&str]) -> Vec<String> {
        list.iter().map(|d| (*d).to_owned()).collect()
    }

    #[test]
    fn host_names_pass_and_everything_else_is_refused() {
        for good in ["alice.example", "www.alice-shop.example", "a", "x1.y2"] {
            assert!(is_valid_domain(good), "{good}");
        }
        for bad in [
            "a.example; include /etc/shadow",
            "Alice.example",
            "a..example",
            "-a.example",
            "a-.example",
            "a.example.",
            "*.example",
            "a_b.example",
            "a.example\n",
            "",
            "é.example",
        ] {
            assert!(!is_valid_domain(bad), "{bad:?}");
        }
        assert!(!is_valid_domain(&"a".repeat(64)));
    }

    #[test]
    fn a_document_root_stays_inside_the_home() {
        let root = |r: &str| Site::check("alice", &domains(&["alice.example"]), r, "php");
        assert_eq!(root("www").expect("www").document_root, Path::new("www"));
        assert_eq!(
            root("sites/blog/").expect("nested").document_root,
            Path::new("sites/blog")
        );
        for bad in [
            "../bob/www",
            "www/../../bob",
            "/etc",
            "",
            ".",
            "./www",
            "www;}",
            "w w",
        ] {
            let error = root(bad).expect_err(bad).to_string();
            assert!(error.contains("leaves the home"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_hostile_domain_is_refused_with_its_text() {
        let error = Site::check(
            "alice",
            &domains(&["a.example; include /etc/shadow"]),
            "www",
            "php",
        )
        .expect_err("hostile")
        .to_string();
        assert!(error.contains("a.example; include /etc/shadow"), "{error}");
        assert!(error.contains("not a host name"), "{error}");
    }

    #[test]
    fn definitions_are_read_and_checked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("navette-sites-defs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        assert!(read_account(&dir, "alice")?.is_empty(), "no file: no sites");
        std::fs::write(
            dir.join("alice.toml"),
            "[[site]]\ndomains = [\"alice.example\", \"www.alice.example\"]\n\n[[site]]\ndomains = [\"static.alice.example\"]\ndocument_root = \"static\"\nruntime = \"static\"\n",
        )?;
        let sites = read_account(&dir, "alice")?;
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[0].document_root, Path::new("www"));
        assert_eq!(sites[0].runtime, Runtime::Php);
        assert_eq!(sites[1].runtime, Runtime::Static);
        std::fs::write(
            dir.join("bob.toml"),
            "[[site]]\ndomains = [\"bob.example\"]\n[[site]]\ndomains = [\"bob.example\"]\n",
        )?;
        let error = read_account(&dir, "bob").expect_err("twice").to_string();
        assert!(error.contains("bob.example is listed twice"), "{error}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
