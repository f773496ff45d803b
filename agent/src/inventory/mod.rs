//! The host inventory (`navette.v1.HostInventory`): what the host is, its
//! addresses and disk, its database servers, and its customer accounts with
//! their homes and databases.
//!
//! Each part is a small function in its own module; this one assembles them
//! and computes the digest the heartbeat carries. Reads only: nothing here
//! changes the host. A database server that is down is reported unreachable;
//! only an unreadable accounts directory or disk fails a collection (a
//! partial account list would look like accounts disappearing). A home a
//! copy made by Navette holds (`transfer::copies`) is reported with the
//! copy's id in `copy_of_test`, so it is never taken for the account.

pub mod accounts;
pub mod mariadb;
pub mod postgres;
pub mod system;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navette_proto::v1::{Account, Database, DatabaseServer, HostInventory};
use tokio::sync::watch;

use crate::config::Config;

/// Why an inventory could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot list the accounts directory {path}")]
    AccountsDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    System(#[from] system::SystemError),
    #[error("the account walk stopped unexpectedly")]
    Walk(#[source] tokio::task::JoinError),
}

/// One database server's report and the databases found on it.
#[derive(Clone, Debug)]
pub struct ServerFindings {
    pub server: DatabaseServer,
    pub databases: Vec<Database>,
    /// PostgreSQL: the roles that are direct members of each database
    /// owner role (`GRANT wp TO alice`), so that a database owned by a role
    /// not named after any account (`wordpress` owned by `wp`) still goes
    /// to the account whose role can act as its owner. Empty for MariaDB.
    pub owner_members: HashMap<String, Vec<String>>,
}

/// An inventory and its digest.
#[derive(Clone, Debug)]
pub struct Collected {
    pub inventory: HostInventory,
    /// [`digest`] of `inventory`.
    pub digest: String,
}

/// Collects the inventory of this host.
#[derive(Clone, Debug)]
pub struct Collector {
    config: Arc<Config>,
    host_id: String,
    /// Each home's last measured size and when it was measured: reused for
    /// `home_usage_interval_secs`, so that homes are not walked at every
    /// collection.
    usage: Arc<Mutex<HashMap<PathBuf, Measured>>>,
    /// Each PostgreSQL database's extensions as last read, reused like
    /// home sizes.
    extensions: postgres::ExtensionCache,
}

#[derive(Clone, Copy, Debug)]
struct Measured {
    at: Instant,
    usage: accounts::TreeUsage,
}

impl Collector {
    pub fn new(config: Arc<Config>, host_id: String) -> Collector {
        Collector {
            config,
            host_id,
            usage: Arc::default(),
            extensions: postgres::ExtensionCache::default(),
        }
    }

    /// Collects everything now. The account walk runs on a blocking thread
    /// while the database servers are queried.
    pub async fn collect(&self) -> Result<Collected, InventoryError> {
        self.collect_measuring(HashSet::new()).await
    }

    /// [`Collector::collect`], measuring the homes of `accounts` now
    /// whatever the age of their last measurement; when `accounts` is not
    /// empty, databases' extensions are read now too.
    pub async fn collect_measuring(
        &self,
        accounts: HashSet<String>,
    ) -> Result<Collected, InventoryError> {
        let config = &self.config;
        let accounts_dir = config.accounts_dir.clone();
        let measured = self.usage.clone();
        let max_age = Duration::from_secs(config.home_usage_interval_secs);
        // An inventory asked for with homes to measure now (a report, a
        // test) reads every database's extensions now too; a periodic one
        // reuses them while they are as young as home sizes.
        let facts_age = if accounts.is_empty() {
            max_age
        } else {
            Duration::ZERO
        };
        let walk = tokio::task::spawn_blocking(move || {
            walk_accounts(accounts_dir, &measured, max_age, &accounts)
        });
        let addresses = system::host_addresses()?;
        let disk = system::disk_usage(&config.accounts_dir)?;
        let fallback_address = addresses.first().cloned().unwrap_or_default();

        let mut findings = Vec::new();
        for server in &config.postgresql {
            let public_address = server.public_address.clone().unwrap_or_else(|| {
                if server.uses_socket() {
                    fallback_address.clone()
                } else {
                    server.host.clone()
                }
            });
            findings.push((
                Attribution::ByOwner,
                postgres::inspect(server, public_address, &self.extensions, facts_age).await,
            ));
        }
        for server in &config.mariadb {
            let public_address = server
                .public_address
                .clone()
                .unwrap_or_else(|| fallback_address.clone());
            findings.push((
                Attribution::ByName,
                mariadb::inspect(server, public_address).await,
            ));
        }

        let account_dirs = walk.await.map_err(InventoryError::Walk)??;
        // Homes that are copies made by Navette are reported as such.
        let copies = crate::transfer::copies::homes(&config.state_dir);
        let mut accounts: Vec<Account> = account_dirs
            .into_iter()
            .map(|(dir, usage)| Account {
                sites: sites_of(&config.sites.definitions_dir, &dir.name),
                name: dir.name,
                host_id: self.host_id.clone(),
                home: dir.home.display().to_string(),
                uid: dir.uid,
                home_size_bytes: usage.bytes,
                home_files: usage.files,
                databases: Vec::new(),
                updated_at: None,
                copy_of_test: copies.get(&dir.home).cloned().unwrap_or_default(),
            })
            .collect();
        let mut database_servers = Vec::new();
        for (attribution, found) in findings {
            attribute(
                &mut accounts,
                attribution,
                found.databases,
                &found.owner_members,
            );
            database_servers.push(found.server);
        }

        let inventory = HostInventory {
            host_id: self.host_id.clone(),
            kind: config.kind.host_kind().into(),
            stack_version: config.stack_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_endpoint: config.advertise().to_string(),
            addresses,
            disk_total_bytes: disk.total_bytes,
            disk_free_bytes: disk.free_bytes,
            database_servers,
            accounts,
            collected_at: Some(navette_proto::timestamp(chrono::Utc::now())),
            // The same set both ways: this build serves and pulls alike.
            source_protocols: config.transfer_protocols(),
            target_protocols: config.transfer_protocols(),
            web_server_running: web_server_running(&config.sites),
        };
        let digest = digest(&inventory);
        Ok(Collected { inventory, digest })
    }
}

/// Whether the host's web server runs, so that sites started here answer:
/// its pid file names a live process, or the operator gave a reload
/// command (the web server is then theirs to keep running).
fn web_server_running(sites: &crate::config::Sites) -> bool {
    sites.reload_command.is_some()
        || crate::sites::fpm::read_pid(&sites.web_server_pid_file).is_ok()
}

/// An account's sites as the host's definitions list them; none (and a
/// warning) when its definition file is refused: a site that would not
/// start is not reported as one.
fn sites_of(definitions_dir: &std::path::Path, account: &str) -> Vec<navette_proto::v1::Site> {
    match crate::sites::definitions::read_account(definitions_dir, account) {
        Ok(sites) => sites.iter().map(|site| site.to_proto()).collect(),
        Err(error) => {
            tracing::warn!(message = "site definitions refused", %account, error = %error);
            Vec::new()
        }
    }
}

/// The newest inventory, shared by the collection loop, the `GetInventory`
/// handler and the heartbeat loop. Subscribers are woken only when the
/// digest changes.
#[derive(Clone, Debug)]
pub struct LatestInventory(watch::Sender<Option<Arc<Collected>>>);

impl Default for LatestInventory {
    fn default() -> Self {
        LatestInventory(watch::Sender::new(None))
    }
}

impl LatestInventory {
    /// Records a new collection.
    pub fn publish(&self, collected: Collected) {
        let collected = Arc::new(collected);
        self.0.send_if_modified(|slot| {
            let changed = slot
                .as_ref()
                .is_none_or(|previous| previous.digest != collected.digest);
            *slot = Some(collected);
            changed
        });
    }

    /// The newest collection, if any.
    pub fn current(&self) -> Option<Arc<Collected>> {
        self.0.borrow().clone()
    }

    /// A receiver that sees each change of digest.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Collected>>> {
        self.0.subscribe()
    }
}

type AccountUsage = (accounts::AccountDir, accounts::TreeUsage);

/// The account directories, each with its home's usage: measured again
/// when older than `max_age` (or never measured, or the account is in
/// `now`), else as last measured.
fn walk_accounts(
    accounts_dir: PathBuf,
    measured: &Mutex<HashMap<PathBuf, Measured>>,
    max_age: Duration,
    now: &HashSet<String>,
) -> Result<Vec<AccountUsage>, InventoryError> {
    let dirs = accounts::list_account_dirs(&accounts_dir).map_err(|source| {
        InventoryError::AccountsDir {
            path: accounts_dir.clone(),
            source,
        }
    })?;
    let mut previous = std::mem::take(&mut *measured.lock().unwrap_or_else(|p| p.into_inner()));
    let mut current = HashMap::with_capacity(dirs.len());
    let listed = dirs
        .into_iter()
        .map(|dir| {
            let fresh = previous
                .remove(&dir.home)
                .filter(|m| m.at.elapsed() < max_age && !now.contains(&dir.name));
            let known = match fresh {
                Some(known) => known,
                None => {
                    let usage = accounts::measure_tree(&dir.home);
                    if usage.unreadable > 0 {
                        tracing::warn!(
                            message = "some entries of a home could not be read and are not counted",
                            account = %dir.name,
                            home = %dir.home.display(),
                            unreadable = usage.unreadable
                        );
                    }
                    Measured {
                        at: Instant::now(),
                        usage,
                    }
                }
            };
            current.insert(dir.home.clone(), known);
            (dir, known.usage)
        })
        .collect();
    // Homes gone since are forgotten.
    *measured.lock().unwrap_or_else(|p| p.into_inner()) = current;
    Ok(listed)
}

/// How a server's databases map to accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// PostgreSQL: the database belongs to the account named like its owner
    /// role or, failing that, to the one account whose role is a member of
    /// the owner role (the owner is then kept as it is: the role the copy
    /// must bring). An owner several accounts are members of is no one's.
    ByOwner,
    /// MariaDB: the database belongs to account `a` when named `a` or `a_*`;
    /// its owner is then set to `a`.
    ByName,
}

/// Gives each database to its account; databases of no account are left
/// out (they are the platform's own or a stranger's). `owner_members`:
/// see [`ServerFindings::owner_members`].
pub fn attribute(
    accounts: &mut [Account],
    attribution: Attribution,
    databases: Vec<Database>,
    owner_members: &HashMap<String, Vec<String>>,
) {
    for mut database in databases {
        let owner = match attribution {
            Attribution::ByOwner if accounts.iter().any(|a| a.name == database.owner) => {
                Some(database.owner.clone())
            }
            Attribution::ByOwner => {
                let members: Vec<&String> = owner_members
                    .get(&database.owner)
                    .into_iter()
                    .flatten()
                    .filter(|m| accounts.iter().any(|a| &a.name == *m))
                    .collect();
                match members.as_slice() {
                    [only] => Some((*only).clone()),
                    _ => None,
                }
            }
            Attribution::ByName => {
                mariadb::account_of(&database.name, accounts.iter().map(|a| a.name.as_str()))
                    .map(str::to_owned)
            }
        };
        let account = owner.and_then(|owner| accounts.iter_mut().find(|a| a.name == owner));
        match account {
            Some(account) => {
                if attribution == Attribution::ByName {
                    database.owner = account.name.clone();
                }
                account.databases.push(database);
            }
            None => tracing::debug!(
                message = "database of no account left out",
                server = %database.server,
                database = %database.name
            ),
        }
    }
}

/// The digest the heartbeat carries: SHA-256 (hex) of the encoded
/// inventory without its collection time, as the controller computes it
/// (`navette_proto::inventory_digest`, the one definition both sides share).
pub fn digest(inventory: &HostInventory) -> String {
    navette_proto::inventory_digest(inventory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use navette_proto::v1::{DatabaseEngine, HostKind};

    #[test]
    fn homes_are_walked_again_only_when_their_size_is_old() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = std::env::temp_dir().join(format!("navette-usage-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("alice"))?;
        std::fs::write(dir.join("alice/index.html"), b"hello")?;
        let measured = Mutex::new(HashMap::new());
        let files = |listed: Vec<AccountUsage>| -> Vec<(String, u64)> {
            listed.into_iter().map(|(d, u)| (d.name, u.files)).collect()
        };
        let hour = Duration::from_secs(3600);
        let none = HashSet::new();
        let first = walk_accounts(dir.clone(), &measured, hour, &none)?;
        assert_eq!(files(first), [("alice".to_owned(), 1)]);
        // A new file: the size stays as measured while it is young; a new
        // account is measured at once.
        std::fs::write(dir.join("alice/about.html"), b"more")?;
        std::fs::create_dir_all(dir.join("bruno"))?;
        let second = walk_accounts(dir.clone(), &measured, hour, &none)?;
        assert_eq!(
            files(second),
            [("alice".to_owned(), 1), ("bruno".to_owned(), 0)]
        );
        // Asked for, alice's home is walked now, young or not.
        let asked = HashSet::from(["alice".to_owned()]);
        std::fs::write(dir.join("alice/contact.html"), b"more")?;
        let asked_for = walk_accounts(dir.clone(), &measured, hour, &asked)?;
        assert_eq!(
            files(asked_for),
            [("alice".to_owned(), 3), ("bruno".to_owned(), 0)]
        );
        std::fs::remove_file(dir.join("alice/contact.html"))?;
        // Old enough: walked again.
        let third = walk_accounts(dir.clone(), &measured, Duration::ZERO, &none)?;
        assert_eq!(
            files(third),
            [("alice".to_owned(), 2), ("bruno".to_owned(), 0)]
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn the_web_server_runs_when_its_pid_file_names_a_live_process() {
        let pid_file = std::env::temp_dir().join(format!("navette-web-pid-{}", std::process::id()));
        let _ = std::fs::remove_file(&pid_file);
        let mut sites = crate::config::Sites {
            web_server_pid_file: pid_file,
            reload_command: None,
            ..crate::config::Sites::default()
        };
        assert!(!web_server_running(&sites), "no pid file");
        std::fs::write(&sites.web_server_pid_file, "999999999\n").expect("writing");
        assert!(!web_server_running(&sites), "a process that is gone");
        std::fs::write(
            &sites.web_server_pid_file,
            format!("{}\n", std::process::id()),
        )
        .expect("writing");
        assert!(web_server_running(&sites), "a live process");
        std::fs::remove_file(&sites.web_server_pid_file).expect("removing");
        sites.reload_command = Some(vec!["systemctl".into(), "reload".into(), "nginx".into()]);
        assert!(web_server_running(&sites), "the operator's reload command");
    }

    fn inventory(seconds: i64) -> HostInventory {
        HostInventory {
            host_id: "shared-1".into(),
            kind: HostKind::Shared.into(),
            stack_version: "2024.1".into(),
            agent_version: "0.1.0".into(),
            agent_endpoint: "192.0.2.11:7445".into(),
            addresses: vec!["192.0.2.11".into()],
            disk_total_bytes: 1000,
            disk_free_bytes: 500,
            database_servers: Vec::new(),
            accounts: vec![account("alice")],
            collected_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            source_protocols: vec![1, 2],
            target_protocols: vec![1, 2],
            web_server_running: false,
        }
    }

    fn account(name: &str) -> Account {
        Account {
            name: name.into(),
            host_id: "shared-1".into(),
            home: format!("/home/{name}"),
            uid: 1000,
            ..Account::default()
        }
    }

    fn database(name: &str, owner: &str, engine: DatabaseEngine) -> Database {
        Database {
            engine: engine.into(),
            server: "main".into(),
            name: name.into(),
            size_bytes: 8192,
            owner: owner.into(),
            ..Database::default()
        }
    }

    #[test]
    fn the_digest_ignores_the_collection_time() {
        let first = digest(&inventory(1_700_000_000));
        assert_eq!(first, digest(&inventory(1_700_000_060)));
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_digest_changes_with_the_content() {
        let mut changed = inventory(1_700_000_000);
        changed.accounts[0].home_size_bytes += 1;
        assert_ne!(digest(&inventory(1_700_000_000)), digest(&changed));
    }

    #[test]
    fn postgresql_databases_go_to_their_owner() {
        let mut accounts = vec![account("alice"), account("bob")];
        attribute(
            &mut accounts,
            Attribution::ByOwner,
            vec![
                database("shop", "alice", DatabaseEngine::Postgresql),
                database("bob", "bob", DatabaseEngine::Postgresql),
                database("platform", "postgres", DatabaseEngine::Postgresql),
                database("wordpress", "wp", DatabaseEngine::Postgresql),
                database("shared", "team", DatabaseEngine::Postgresql),
            ],
            &[
                ("wp".to_owned(), vec!["alice".to_owned()]),
                (
                    "team".to_owned(),
                    vec!["alice".to_owned(), "bob".to_owned()],
                ),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(accounts[0].databases.len(), 2);
        assert_eq!(accounts[0].databases[0].name, "shop");
        // Owned by a role alice's role is a member of: alice's, with its
        // real owner.
        assert_eq!(accounts[0].databases[1].name, "wordpress");
        assert_eq!(accounts[0].databases[1].owner, "wp");
        assert_eq!(accounts[1].databases.len(), 1);
        assert_eq!(accounts[1].databases[0].owner, "bob");
    }

    #[test]
    fn mariadb_databases_go_to_the_account_they_are_named_after() {
        let mut accounts = vec![account("alice"), account("bob")];
        attribute(
            &mut accounts,
            Attribution::ByName,
            vec![
                database("alice_wp", "", DatabaseEngine::Mariadb),
                database("bob", "", DatabaseEngine::Mariadb),
                database("carol_x", "", DatabaseEngine::Mariadb),
            ],
            &HashMap::new(),
        );
        assert_eq!(accounts[0].databases[0].name, "alice_wp");
        assert_eq!(accounts[0].databases[0].owner, "alice");
        assert_eq!(accounts[1].databases[0].owner, "bob");
    }
}
