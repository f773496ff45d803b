//! [`Rig`]: one test's world of hosts, and its teardown.
//!
//! Owns: the rig's prefix and working directory, the switch namespace
//! (`<prefix>-sw`, bridge `br0`) and the client namespace (`<prefix>-net`,
//! 192.0.2.254, the "internet" from which tests and grpcurl call), the list
//! of every namespace and long-running process of the rig, and the database
//! servers started on each host (so accounts and agent configs can find
//! them). Teardown in `Drop` kills everything and deletes every namespace,
//! also when the test panics; it logs failures and never panics.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::controller::ControllerAccess;
use crate::netns::{Netns, add_namespace, ip};
use crate::process::ChildProcess;
use crate::sweep::{self, KEEP_FILE};
use crate::{MariaDb, Postgres, install};

/// The client namespace's address: the rest of the internet.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// One test's rig. Create with [`Rig::new`]; everything goes at drop.
pub struct Rig {
    /// Names the test in the owner file and in messages.
    test_name: String,
    /// `nv` + 5 hex digits: starts every namespace, interface and directory.
    prefix: String,
    /// `/tmp/navette-rig/<prefix>/`.
    dir: PathBuf,
    /// `<prefix>-sw`, holding the bridge.
    switch: String,
    /// `<prefix>-net`, where test code and grpcurl run.
    client: Netns,
    /// Every namespace created (or being created), for teardown.
    namespaces: Mutex<Vec<String>>,
    /// Hosts added with [`Rig::add_namespace`], to refuse duplicates.
    hosts: Mutex<Vec<Netns>>,
    /// Every long-running process, killed at teardown.
    processes: Mutex<Vec<ChildProcess>>,
    /// Database servers per namespace name.
    servers: Mutex<HashMap<String, HostServers>>,
    /// Set by [`Rig::start_controller`].
    controller: Mutex<Option<ControllerAccess>>,
    /// Numbers veth interfaces (`<prefix>v<n>`, at most 15 bytes).
    next_veth: AtomicU32,
}

/// The database servers started on one host, ordered by port (the first
/// one is the one accounts go to, and is named `main` in the agent config).
#[derive(Clone, Debug, Default)]
pub struct HostServers {
    pub postgres: Vec<Postgres>,
    pub mariadb: Vec<MariaDb>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Rig {
    /// Creates a rig: runs setup.sh once per process, sweeps rigs left by
    /// dead test processes, then makes the working directory, the switch and
    /// the client namespace.
    pub fn new(test_name: &str) -> anyhow::Result<Rig> {
        install::ensure_installed()?;
        let (prefix, dir) = {
            let _lock = install::machine_lock()?;
            sweep::sweep_stale();
            sweep::claim_rig_dir(test_name)?
        };
        let switch = format!("{prefix}-sw");
        let log_dir = dir.join("logs");
        let client = Netns {
            host: "net".to_owned(),
            name: format!("{prefix}-net"),
            addr: CLIENT_ADDR,
            root: dir.join("net"),
            veth: format!("{prefix}net"),
            switch: switch.clone(),
            log_dir: log_dir.clone(),
        };
        let rig = Rig {
            test_name: test_name.to_owned(),
            prefix,
            dir,
            switch,
            client,
            namespaces: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
            servers: Mutex::new(HashMap::new()),
            controller: Mutex::new(None),
            next_veth: AtomicU32::new(0),
        };
        make_dir(&log_dir, 0o755)?;
        lock(&rig.namespaces).push(rig.switch.clone());
        add_namespace(&rig.switch)?;
        let what = "creating the switch";
        ip(
            &["-n", &rig.switch, "link", "add", "br0", "type", "bridge"],
            what,
        )?;
        ip(&["-n", &rig.switch, "link", "set", "br0", "up"], what)?;
        ip(&["-n", &rig.switch, "link", "set", "lo", "up"], what)?;
        lock(&rig.namespaces).push(rig.client.name.clone());
        rig.client.create()?;
        Ok(rig)
    }

    /// Adds a host: namespace `<prefix>-<name>` with `eth0` at `addr/24` on
    /// the bridge, and its root directory. `name`: 1 to 20 of `a-z0-9-`;
    /// `addr`: 192.0.2.1 to 192.0.2.253 (.254 is the client).
    pub fn add_namespace(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Netns> {
        let valid = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid || ["sw", "net", "logs"].contains(&name) {
            bail!("host name {name:?}: use 1 to 20 of a-z, 0-9, '-', and not sw, net or logs");
        }
        let [a, b, c, d] = addr.octets();
        if (a, b, c) != (192, 0, 2) || !(1..=253).contains(&d) {
            bail!(
                "host {name}: address {addr} is not in 192.0.2.1-192.0.2.253 (documentation range; .254 is the client)"
            );
        }
        let veth = format!(
            "{}v{}",
            self.prefix,
            self.next_veth.fetch_add(1, Ordering::Relaxed)
        );
        let netns = Netns {
            host: name.to_owned(),
            name: format!("{}-{name}", self.prefix),
            addr,
            root: self.dir.join(name),
            veth,
            switch: self.switch.clone(),
            log_dir: self.dir.join("logs"),
        };
        {
            let mut hosts = lock(&self.hosts);
            if let Some(other) = hosts.iter().find(|h| h.host == name || h.addr == addr) {
                bail!(
                    "host {name} ({addr}) clashes with host {} ({})",
                    other.host,
                    other.addr
                );
            }
            hosts.push(netns.clone());
        }
        lock(&self.namespaces).push(netns.name.clone());
        netns.create()?;
        Ok(netns)
    }

    /// The client namespace (192.0.2.254): where test code and grpcurl run.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The rig's prefix (`nv` + 5 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The working directory `/tmp/navette-rig/<prefix>/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The test's name, as given to [`Rig::new`].
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// Every namespace of the rig (switch and client included).
    pub fn namespace_names(&self) -> Vec<String> {
        lock(&self.namespaces).clone()
    }

    /// Hosts added so far.
    pub fn hosts(&self) -> Vec<Netns> {
        lock(&self.hosts).clone()
    }

    /// Starts a long-running process (typically `netns.command(...)`) with
    /// its output in `<rig>/logs/<host>-<label>.log`; the rig kills it at
    /// teardown.
    pub fn spawn(
        &self,
        netns: &Netns,
        label: &str,
        build: impl Fn() -> Command + Send + Sync + 'static,
    ) -> anyhow::Result<ChildProcess> {
        let file: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let log = netns.log_dir.join(format!("{}-{file}.log", netns.host));
        let process = ChildProcess::spawn(format!("{label} on {}", netns.host), log, build)?;
        lock(&self.processes).push(process.clone());
        Ok(process)
    }

    /// [`Netns::run_in`]: runs an async block inside `netns`.
    pub fn run_in<F, Fut, T>(&self, netns: &Netns, make_future: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>>,
        T: Send,
    {
        netns.run_in(make_future)
    }

    /// [`crate::wait_until`].
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        crate::wait_until(what, timeout, check)
    }

    /// The database servers started on `netns`.
    pub fn servers(&self, netns: &Netns) -> HostServers {
        lock(&self.servers)
            .get(&netns.name)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets the database servers of `netns` (a reinstall wiped them):
    /// the next agent config names only those started after.
    pub(crate) fn forget_servers(&self, netns: &Netns) -> HostServers {
        lock(&self.servers).remove(&netns.name).unwrap_or_default()
    }

    pub(crate) fn register_postgres(&self, netns: &Netns, server: Postgres) {
        let mut servers = lock(&self.servers);
        let host = servers.entry(netns.name.clone()).or_default();
        host.postgres.push(server);
        host.postgres.sort_by_key(Postgres::port);
    }

    pub(crate) fn register_mariadb(&self, netns: &Netns, server: MariaDb) {
        let mut servers = lock(&self.servers);
        let host = servers.entry(netns.name.clone()).or_default();
        host.mariadb.push(server);
        host.mariadb.sort_by_key(MariaDb::port);
    }

    /// The last `lines` lines of every process's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut report = String::new();
        for process in lock(&self.processes).iter() {
            report.push_str(&format!(
                "\n--- {} ({}):\n{}\n",
                process.label(),
                process.log_path().display(),
                process.log_tail(lines)
            ));
        }
        report
    }

    pub(crate) fn set_controller(&self, access: ControllerAccess) {
        *lock(&self.controller) = Some(access);
    }

    /// How to reach the controller (addresses, CA, operator and panel
    /// certificates); an error before [`Rig::start_controller`].
    pub fn controller_access(&self) -> anyhow::Result<ControllerAccess> {
        lock(&self.controller)
            .clone()
            .context("no controller in this rig yet: call rig.start_controller first")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "navette rig {} ({}) failed; {}",
                self.prefix,
                self.test_name,
                self.log_tails(20)
            );
        }
        // A frozen process cannot die: thaw the hosts' account groups first.
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        for namespace in &namespaces {
            crate::web::thaw_host_groups(namespace);
        }
        for process in std::mem::take(&mut *lock(&self.processes)) {
            process.kill9();
        }
        for namespace in &namespaces {
            sweep::kill_namespace_processes(namespace);
        }
        for namespace in &namespaces {
            sweep::wait_namespace_empty(namespace, Duration::from_secs(3));
            crate::web::remove_host_groups(namespace);
            sweep::delete_namespace(namespace);
        }
        if std::env::var("NAVETTE_RIG_KEEP").is_ok_and(|keep| keep == "1") {
            let _ = std::fs::write(self.dir.join(KEEP_FILE), "NAVETTE_RIG_KEEP=1\n");
            eprintln!(
                "navette rig {} ({}): kept {} (remove it yourself)",
                self.prefix,
                self.test_name,
                self.dir.display()
            );
        } else if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("navette rig: removing {}: {error}", self.dir.display());
        }
    }
}

/// Sets a path's permission bits.
pub(crate) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Creates a directory (and parents) with `mode`.
pub(crate) fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    set_mode(path, mode)
}

/// Creates a directory owned by a system user (`postgres`, `mysql`...).
pub(crate) fn make_dir_owned(path: &Path, mode: u32, user: &str) -> anyhow::Result<()> {
    make_dir(path, mode)?;
    let owner = nix::unistd::User::from_name(user)
        .with_context(|| format!("looking up user {user}"))?
        .with_context(|| format!("no system user {user}"))?;
    std::os::unix::fs::chown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
        .with_context(|| format!("chown {user} {}", path.display()))
}
