//! An account's sites on this host: knowing them, starting, stopping,
//! freezing and thawing them.
//!
//! - [`definitions`]: what a site is, the checks on customer input, and
//!   the host's definition files (`[sites] definitions_dir`);
//! - [`fpm`]: the account's PHP-FPM master and its pool;
//! - [`nginx`]: the host web server's server blocks and reload.
//!
//! Running an account's sites ([`SiteHost::start`]) means: its FPM master
//! (if a site needs PHP) in the account's control group
//! ([`crate::cgroups`]), a pool running as the account's own uid and gid,
//! one server block per site pointing at the account's socket, then the
//! web server reloaded. A record of the domains each account serves
//! (`<run_dir>/<account>/sites.json`) is written before any server block,
//! so that no domain is ever bound to two accounts: a start whose domain
//! another account serves is refused and writes nothing.
//!
//! Invariants: customer input (definitions, `StartSites` calls) passes
//! [`definitions::Site::check`] before anything is written; a pool never
//! runs as root, nor as a user who does not own the home it serves; a
//! document root resolves (symlinks followed) inside the home; every
//! operation is idempotent; an agent restart never stops a site (masters
//! are daemons the agent finds again by their pid files); the agent never
//! starts sites by itself: the host's init, the panel or the controller
//! asks for them with `StartSites` (on a test host, the controller, with
//! the copy's sites and databases).

pub mod definitions;
pub mod fpm;
pub mod nginx;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroups::{AccountGroups, CgroupError, Frozen};
use crate::config::Config;
use definitions::{Runtime, Site, SiteError};
use fpm::{Endpoints, FpmError, PoolPaths};
use nginx::WebServerError;

/// How long the kernel may take to freeze an account's processes.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a freeze lasts when the caller gives no bound, and the
/// longest it may ask for.
pub const LONGEST_FREEZE: Duration = Duration::from_secs(10);
/// How long emptying an account's group may take.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sites operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    /// Refused input (a site, an endpoint); the message says what is wrong.
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error("{field}: {value:?} is not a host, socket path or port this agent writes into a pool")]
    BadEndpoint { field: &'static str, value: String },
    #[error("account {account}: no sites given, and the host's definitions list none")]
    NoSites { account: String },
    #[error("account {account}: no home at {}", home.display())]
    NoHome { account: String, home: PathBuf },
    #[error("no copy {copy_id} of account {account} on this host")]
    UnknownCopy { account: String, copy_id: String },
    #[error("account {account}: {reason}; its sites are not started")]
    Owner { account: String, reason: String },
    #[error("account {account}: document root {root}: {reason}")]
    DocumentRoot {
        account: String,
        root: String,
        reason: String,
    },
    #[error(
        "account {account}: domain {domain} is already served on this host by account {other}: stop that account's sites first (or correct the definitions)"
    )]
    DomainTaken {
        account: String,
        domain: String,
        other: String,
    },
    #[error(
        "the web server user {0:?} (`[sites] web_server_user`) does not exist on this host: correct the agent's configuration"
    )]
    NoWebServerUser(String),
    #[error("account {account} has no sites running on this host")]
    NotRunning { account: String },
    #[error(transparent)]
    Fpm(#[from] FpmError),
    #[error(transparent)]
    WebServer(#[from] WebServerError),
    #[error("control group of account {account}: {source}")]
    Cgroup {
        account: String,
        #[source]
        source: CgroupError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SitesError {
    /// Whether the request was refused before anything changed (bad input,
    /// a precondition), as opposed to failing on the way.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            SitesError::Fpm(_)
                | SitesError::WebServer(_)
                | SitesError::Cgroup { .. }
                | SitesError::Io { .. }
        )
    }
}

/// Counts `result` of a sites `operation` in the metrics, and logs a
/// failure with the account.
fn counted<T>(
    operation: &'static str,
    account: &str,
    result: Result<T, SitesError>,
) -> Result<T, SitesError> {
    let outcome = match &result {
        Ok(_) => "done",
        Err(error) if error.is_refusal() => "refused",
        Err(_) => "failed",
    };
    crate::metrics::sites_operation(operation, outcome);
    if let Err(error) = &result {
        tracing::warn!(
            message = "sites operation not done",
            operation,
            outcome,
            %account,
            error = %crate::error_chain(error)
        );
    }
    result
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SitesError + 'a {
    move |source| SitesError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What to start: an account's sites, checked.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub account: String,
    /// `Some`: the sites run from this copy's home.
    pub copy_id: Option<String>,
    /// Empty: the host's definitions.
    pub sites: Vec<Site>,
    /// `None`: this host's first database servers.
    pub endpoints: Option<Endpoints>,
}

/// What [`SiteHost::start`] did.
#[derive(Clone, Debug)]
pub struct Started {
    pub sites: Vec<Site>,
    pub already_running: bool,
}

/// The record of what an account serves, read to refuse another account
/// the same domain.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    home: PathBuf,
    domains: Vec<String>,
}

/// This host's sites. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SiteHost {
    config: Arc<Config>,
    /// Held for the whole of a start or stop: two starts must not both
    /// find a domain free.
    changing: Arc<Mutex<()>>,
    /// The freezes in force, thawed when dropped or at their deadline.
    frozen: Arc<Mutex<HashMap<String, Frozen>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SiteHost {
    pub fn new(config: Arc<Config>) -> SiteHost {
        SiteHost {
            config,
            changing: Arc::default(),
            frozen: Arc::default(),
        }
    }

    fn groups(&self, account: &str) -> Result<AccountGroups, SitesError> {
        let sites = &self.config.sites;
        AccountGroups::open(&sites.cgroup_mount, &sites.cgroup_base).map_err(|source| {
            SitesError::Cgroup {
                account: account.to_owned(),
                source,
            }
        })
    }

    /// The sites the host's definitions give `account`.
    pub fn defined(&self, account: &str) -> Result<Vec<Site>, SiteError> {
        definitions::read_account(&self.config.sites.definitions_dir, account)
    }

    /// At agent start: the pools already running are the agent's again
    /// (nothing is restarted), and a freeze a crash left in force is
    /// thawed. Logs what it found; never fails the agent.
    pub fn adopt(&self) {
        let sites = &self.config.sites;
        let Ok(entries) = std::fs::read_dir(&sites.run_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(account) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !crate::inventory::accounts::is_valid_account_name(&account) {
                continue;
            }
            let paths = PoolPaths::new(&sites.run_dir, &account);
            match fpm::running_master(&paths) {
                Some(pid) => {
                    tracing::info!(message = "sites running, adopted", %account, fpm_pid = pid.as_raw())
                }
                None if paths.config.exists() => {
                    tracing::warn!(message = "sites were started but their FPM is not running; StartSites starts it again", %account)
                }
                None => {}
            }
            if let Ok(groups) = self.groups(&account)
                && let Ok(group) = groups.ensure(&account)
                && group.is_frozen().unwrap_or(false)
            {
                match group.thaw() {
                    Ok(_) => tracing::warn!(message = "thawed sites a crash left frozen", %account),
                    Err(error) => {
                        tracing::error!(message = "cannot thaw sites left frozen", %account, %error)
                    }
                }
            }
        }
    }

    /// The defaults for a pool on this host: its first PostgreSQL and
    /// MariaDB servers.
    fn local_endpoints(&self) -> Endpoints {
        Endpoints {
            postgres: self
                .config
                .postgresql
                .first()
                .map(|server| (server.host.clone(), server.port)),
            mariadb: self.config.mariadb.first().map(|server| {
                (
                    "localhost".to_owned(),
                    server.port,
                    server.socket.display().to_string(),
                )
            }),
        }
    }

    /// Runs `request.account`'s sites; see the module documentation.
    pub fn start(&self, request: StartRequest) -> Result<Started, SitesError> {
        let account = request.account.clone();
        counted("start", &account, self.start_counted(request))
    }

    fn start_counted(&self, request: StartRequest) -> Result<Started, SitesError> {
        let account = request.account.as_str();
        let sites = match request.sites.is_empty() {
            true => self.defined(account)?,
            false => request.sites.clone(),
        };
        definitions::check_all(account, &sites)?;
        if sites.is_empty() {
            return Err(SitesError::NoSites {
                account: account.to_owned(),
            });
        }
        let endpoints = match request.endpoints.clone() {
            Some(endpoints) => endpoints,
            None => self.local_endpoints(),
        };
        check_endpoints(&endpoints)?;
        let home = self.home_of(account, request.copy_id.as_deref())?;
        let (uid, gid) = pool_identity(account, &home, request.copy_id.is_some())?;
        for site in &sites {
            check_document_root(account, &home, site, uid)?;
        }
        let config = &self.config.sites;
        let (web_uid, web_gid) = web_server_identity(&config.web_server_user)?;
        if uid == web_uid {
            return Err(SitesError::Owner {
                account: account.to_owned(),
                reason: format!(
                    "its user is the web server's ({}), which may read every account's socket",
                    config.web_server_user
                ),
            });
        }

        let _changing = lock(&self.changing);
        let domains: Vec<String> = sites.iter().flat_map(|s| s.domains.clone()).collect();
        self.refuse_taken(account, &domains)?;

        let paths = PoolPaths::new(&config.run_dir, account);
        make_dir(&paths.dir, 0o711, None)?;
        make_dir(&paths.tmp, 0o700, Some((uid, gid)))?;
        write_record(
            &paths.dir.join("sites.json"),
            &Record {
                home: home.clone(),
                domains,
            },
        )?;

        let needs_php = sites.iter().any(|s| s.runtime == Runtime::Php);
        let running = fpm::running_master(&paths);
        let already_running = running.is_some();
        if needs_php {
            let text = fpm::render(
                &paths,
                &fpm::PoolSpec {
                    account,
                    uid,
                    gid,
                    home: &home,
                    web_uid,
                    web_gid,
                    endpoints: &endpoints,
                },
            );
            let changed = std::fs::read_to_string(&paths.config).ok().as_deref() != Some(&text);
            if changed {
                std::fs::write(&paths.config, &text).map_err(io_error("writing", &paths.config))?;
            }
            match running {
                Some(pid) if changed => {
                    fpm::reload(account, pid)?;
                    tracing::info!(message = "FPM configuration changed, reloaded", %account, fpm_pid = pid.as_raw());
                }
                Some(_) => {}
                None => {
                    let group = self.groups(account)?.ensure(account).map_err(|source| {
                        SitesError::Cgroup {
                            account: account.to_owned(),
                            source,
                        }
                    })?;
                    let pid = fpm::start(
                        account,
                        &config.fpm_command,
                        &paths,
                        &group.path().join("cgroup.procs"),
                    )?;
                    tracing::info!(message = "FPM started", %account, fpm_pid = pid.as_raw(), cgroup = %group.path().display());
                }
            }
        } else if let Some(pid) = running {
            self.stop_pool(account, &paths, pid)?;
        }

        let moved = crate::cutover::forward::moved_socket(&config.run_dir, account);
        let blocks = sites
            .iter()
            .map(|site| nginx::render(account, &home, site, &paths.socket, &moved))
            .collect::<Result<Vec<_>, _>>()?;
        if nginx::write_blocks(&config.server_blocks_dir, account, &blocks)? {
            nginx::reload(
                &config.web_server_pid_file,
                config.reload_command.as_deref(),
            )?;
        }
        tracing::info!(
            message = "sites running",
            %account,
            copy_id = request.copy_id.as_deref().unwrap_or(""),
            home = %home.display(),
            sites = sites.len(),
            already_running
        );
        Ok(Started {
            sites,
            already_running,
        })
    }

    /// Stops `account`'s sites: server blocks first (the web server stops
    /// sending requests), then the pool, then the record. Returns whether
    /// anything was running.
    pub fn stop(&self, account: &str) -> Result<bool, SitesError> {
        counted("stop", account, self.stop_counted(account))
    }

    fn stop_counted(&self, account: &str) -> Result<bool, SitesError> {
        let config = &self.config.sites;
        let _changing = lock(&self.changing);
        if let Some(frozen) = lock(&self.frozen).remove(account) {
            frozen.thaw().map_err(|source| SitesError::Cgroup {
                account: account.to_owned(),
                source,
            })?;
        }
        let mut stopped = false;
        if nginx::remove_blocks(&config.server_blocks_dir, account)? {
            nginx::reload(
                &config.web_server_pid_file,
                config.reload_command.as_deref(),
            )?;
            stopped = true;
        }
        let paths = PoolPaths::new(&config.run_dir, account);
        if let Some(pid) = fpm::running_master(&paths) {
            self.stop_pool(account, &paths, pid)?;
            stopped = true;
        }
        match std::fs::remove_dir_all(&paths.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SitesError::Io {
                    what: "removing",
                    path: paths.dir,
                    source,
                });
            }
        }
        tracing::info!(message = "sites stopped", %account, was_running = stopped);
        Ok(stopped)
    }

    /// Stops a master and empties the account's group of what is left.
    fn stop_pool(
        &self,
        account: &str,
        paths: &PoolPaths,
        pid: nix::unistd::Pid,
    ) -> Result<(), SitesError> {
        let by_itself = fpm::stop(account, pid)?;
        let group = self
            .groups(account)?
            .ensure(account)
            .map_err(|source| SitesError::Cgroup {
                account: account.to_owned(),
                source,
            })?;
        group
            .kill_all(EMPTY_TIMEOUT)
            .and_then(|()| group.remove())
            .map_err(|source| SitesError::Cgroup {
                account: account.to_owned(),
                source,
            })?;
        let _ = std::fs::remove_file(&paths.socket);
        tracing::info!(message = "FPM stopped", %account, fpm_pid = pid.as_raw(), gracefully = by_itself);
        Ok(())
    }

    /// Freezes `account`'s processes for at most `longest` (bounded by
    /// [`LONGEST_FREEZE`]), or thaws them. Returns how long it took.
    pub fn set_frozen(
        &self,
        account: &str,
        frozen: bool,
        longest: Duration,
    ) -> Result<Duration, SitesError> {
        let operation = if frozen { "freeze" } else { "thaw" };
        counted(
            operation,
            account,
            self.set_frozen_counted(account, frozen, longest),
        )
    }

    fn set_frozen_counted(
        &self,
        account: &str,
        frozen: bool,
        longest: Duration,
    ) -> Result<Duration, SitesError> {
        let cgroup_error = |source| SitesError::Cgroup {
            account: account.to_owned(),
            source,
        };
        let paths = PoolPaths::new(&self.config.sites.run_dir, account);
        let group = self
            .groups(account)?
            .ensure(account)
            .map_err(cgroup_error)?;
        if !frozen {
            let took = match lock(&self.frozen).remove(account) {
                Some(guard) => guard.thaw(),
                None => group.thaw(),
            }
            .map_err(cgroup_error)?;
            tracing::info!(message = "sites thawed", %account, took_us = took.as_micros() as u64);
            return Ok(took);
        }
        if fpm::running_master(&paths).is_none() {
            return Err(SitesError::NotRunning {
                account: account.to_owned(),
            });
        }
        let longest = if longest.is_zero() {
            LONGEST_FREEZE
        } else {
            longest.min(LONGEST_FREEZE)
        };
        let mut freezes = lock(&self.frozen);
        if let Some(previous) = freezes.remove(account) {
            // A new freeze replaces the old one and its deadline.
            drop(previous);
        }
        let guard = group
            .freeze_for(FREEZE_TIMEOUT, longest)
            .map_err(cgroup_error)?;
        let took = guard.took();
        freezes.insert(account.to_owned(), guard);
        tracing::info!(message = "sites frozen", %account, took_us = took.as_micros() as u64, longest_ms = longest.as_millis() as u64);
        Ok(took)
    }

    /// The home the sites run from: the account's, or the copy's.
    fn home_of(&self, account: &str, copy_id: Option<&str>) -> Result<PathBuf, SitesError> {
        let home = match copy_id {
            None => self.config.accounts_dir.join(account),
            Some(copy_id) => crate::transfer::copies::Copies::new(&self.config.state_dir)
                .load(copy_id)
                .filter(|record| record.account == account)
                .and_then(|record| record.home)
                .ok_or_else(|| SitesError::UnknownCopy {
                    account: account.to_owned(),
                    copy_id: copy_id.to_owned(),
                })?,
        };
        match std::fs::symlink_metadata(&home) {
            Ok(metadata) if metadata.is_dir() => Ok(home),
            _ => Err(SitesError::NoHome {
                account: account.to_owned(),
                home,
            }),
        }
    }

    /// Refuses `domains` when another account's record holds one.
    fn refuse_taken(&self, account: &str, domains: &[String]) -> Result<(), SitesError> {
        let run_dir = &self.config.sites.run_dir;
        let Ok(entries) = std::fs::read_dir(run_dir) else {
            return Ok(());
        };
        let mut taken: BTreeMap<String, String> = BTreeMap::new();
        for entry in entries.flatten() {
            let Some(other) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if other == account {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("sites.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Record>(&text) else {
                continue;
            };
            for domain in record.domains {
                taken.insert(domain, other.clone());
            }
        }
        match domains.iter().find_map(|d| taken.get(d).map(|o| (d, o))) {
            Some((domain, other)) => Err(SitesError::DomainTaken {
                account: account.to_owned(),
                domain: domain.clone(),
                other: other.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Endpoint values become configuration lines: plain values only.
fn check_endpoints(endpoints: &Endpoints) -> Result<(), SitesError> {
    let bad = |field, value: &str| SitesError::BadEndpoint {
        field,
        value: value.to_owned(),
    };
    if let Some((host, port)) = &endpoints.postgres {
        if !fpm::is_plain_value(host) {
            return Err(bad("databases.postgres_host", host));
        }
        if *port == 0 {
            return Err(bad("databases.postgres_port", "0"));
        }
    }
    if let Some((host, port, socket)) = &endpoints.mariadb {
        if !fpm::is_plain_value(host) {
            return Err(bad("databases.mariadb_host", host));
        }
        if *port == 0 {
            return Err(bad("databases.mariadb_port", "0"));
        }
        if !socket.is_empty() && !fpm::is_plain_value(socket) {
            return Err(bad("databases.mariadb_socket", socket));
        }
    }
    Ok(())
}

/// The uid and gid the pool runs as: the account's system user, which must
/// own the home; for a copy, the home's owner. Never root.
fn pool_identity(account: &str, home: &Path, copy: bool) -> Result<(u32, u32), SitesError> {
    let refuse = |reason: String| SitesError::Owner {
        account: account.to_owned(),
        reason,
    };
    let metadata = std::fs::symlink_metadata(home).map_err(io_error("reading", home))?;
    let owner = metadata.uid();
    let (uid, gid) = if copy {
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
            .ok()
            .flatten()
            .map_or(metadata.gid(), |user| user.gid.as_raw());
        (owner, gid)
    } else {
        let user = nix::unistd::User::from_name(account)
            .map_err(|errno| refuse(format!("looking up its system user: {errno}")))?
            .ok_or_else(|| refuse("it has no system user".to_owned()))?;
        if user.uid.as_raw() != owner {
            return Err(refuse(format!(
                "its home {} is owned by uid {owner}, not by its user (uid {})",
                home.display(),
                user.uid
            )));
        }
        (user.uid.as_raw(), user.gid.as_raw())
    };
    if uid == 0 || gid == 0 {
        return Err(refuse(format!(
            "its home {} belongs to root: a pool never runs as root",
            home.display()
        )));
    }
    Ok((uid, gid))
}

/// The document root must exist and resolve inside the home, and be
/// owned by the pool's user (nginx's `if_not_owner` takes care of the
/// links below it).
fn check_document_root(
    account: &str,
    home: &Path,
    site: &Site,
    uid: u32,
) -> Result<(), SitesError> {
    let refuse = |reason: String| SitesError::DocumentRoot {
        account: account.to_owned(),
        root: site.document_root.display().to_string(),
        reason,
    };
    let root = home.join(&site.document_root);
    let real_home = home
        .canonicalize()
        .map_err(|error| refuse(format!("cannot resolve the home: {error}")))?;
    let real_root = root
        .canonicalize()
        .map_err(|error| refuse(format!("{}: {error}", root.display())))?;
    if !real_root.starts_with(&real_home) {
        return Err(refuse(format!(
            "resolves to {}, outside the home",
            real_root.display()
        )));
    }
    // The home itself may sit behind a link the operator made (`/home` on
    // another disk); below it, no link.
    if real_root != real_home.join(&site.document_root) {
        return Err(refuse(format!(
            "is reached through a symbolic link (resolves to {}): give the real directory",
            real_root.display()
        )));
    }
    let metadata = std::fs::metadata(&real_root).map_err(|error| refuse(error.to_string()))?;
    if !metadata.is_dir() {
        return Err(refuse("is not a directory".to_owned()));
    }
    if metadata.uid() != uid {
        return Err(refuse(format!(
            "is owned by uid {}, not by the account (uid {uid})",
            metadata.uid()
        )));
    }
    Ok(())
}

fn web_server_identity(user: &str) -> Result<(u32, u32), SitesError> {
    let found = nix::unistd::User::from_name(user).ok().flatten();
    let user_record = found.ok_or_else(|| SitesError::NoWebServerUser(user.to_owned()))?;
    Ok((user_record.uid.as_raw(), user_record.gid.as_raw()))
}

fn make_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), SitesError> {
    std::fs::create_dir_all(path).map_err(io_error("creating", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the mode of", path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io_error("setting the owner of", path))?;
    }
    Ok(())
}

fn write_record(path: &Path, record: &Record) -> Result<(), SitesError> {
    let text = serde_json::to_string_pretty(record).unwrap_or_default();
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, text).map_err(io_error("writing", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error("renaming into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(root: &str) -> Site {
        Site::check("alice", &["alice.example".to_owned()], root, "php").expect("a valid site")
    }

    #[test]
    fn a_document_root_reached_through_a_link_is_refused_but_a_linked_home_is_not()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("navette-sites-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = dir.join("disk/alice");
        std::fs::create_dir_all(disk.join("www"))?;
        std::fs::create_dir_all(dir.join("elsewhere"))?;
        std::fs::create_dir_all(dir.join("home"))?;
        // The operator's link: /home/alice on another disk.
        let home = dir.join("home/alice");
        std::os::unix::fs::symlink(&disk, &home)?;
        std::os::unix::fs::symlink("www", disk.join("inside"))?;
        std::os::unix::fs::symlink("../../elsewhere", disk.join("outside"))?;
        let uid = std::fs::metadata(&disk)?.uid();
        check_document_root("alice", &home, &site("www"), uid)?;
        let inside = check_document_root("alice", &home, &site("inside"), uid)
            .expect_err("a link to a directory of the home")
            .to_string();
        assert!(inside.contains("symbolic link"), "{inside}");
        let outside = check_document_root("alice", &home, &site("outside"), uid)
            .expect_err("a link out of the home")
            .to_string();
        assert!(outside.contains("outside the home"), "{outside}");
        let missing = check_document_root("alice", &home, &site("public"), uid)
            .expect_err("no such directory")
            .to_string();
        assert!(missing.contains("public"), "{missing}");
        let stranger = check_document_root("alice", &home, &site("www"), uid + 1)
            .expect_err("owned by someone else")
            .to_string();
        assert!(stranger.contains("not by the account"), "{stranger}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
