//! A host: one network namespace on the rig's bridge, and its root directory.
//!
//! Owns: creating a host's namespace and veth pair, running commands and
//! Rust code inside it, and cutting or restoring its link. Must not know
//! what runs on the host (databases, agents): that is the other modules'.
//!
//! Namespaces share the filesystem, so each host has its own root directory
//! `/tmp/navette-rig/<prefix>/<host>/` with `home/` (accounts), `run/`
//! (sockets), `pg/`, `mysql/` (database data), `agent/` (agent state) and
//! `etc/` (config files).

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use nix::sched::CloneFlags;

use crate::install::run_checked;

/// A host of the rig: a network namespace with an address on the bridge.
///
/// Cheap to clone; it names the namespace, it does not own it (the [`Rig`]
/// deletes every namespace at teardown).
///
/// [`Rig`]: crate::Rig
#[derive(Clone, Debug)]
pub struct Netns {
    /// The host's name as the test gave it (`shared-1`).
    pub(crate) host: String,
    /// The namespace's full name, `<prefix>-<host>`.
    pub(crate) name: String,
    /// The host's address on the bridge, from 192.0.2.0/24.
    pub(crate) addr: Ipv4Addr,
    /// The host's root directory.
    pub(crate) root: PathBuf,
    /// The switch side of the host's veth pair, in the switch namespace.
    pub(crate) veth: String,
    /// The switch namespace, where [`Netns::link_down`] acts.
    pub(crate) switch: String,
    /// Where long-running processes of this host write their logs.
    pub(crate) log_dir: PathBuf,
}

impl Netns {
    /// Creates the namespace, its veth into the switch's bridge, and the
    /// root directory. Called by [`crate::Rig`] once the names are chosen.
    pub(crate) fn create(&self) -> anyhow::Result<()> {
        add_namespace(&self.name)?;
        let what = format!("plugging host {} into the switch", self.host);
        let (n, sw, veth) = (self.name.as_str(), self.switch.as_str(), self.veth.as_str());
        let cidr = format!("{}/24", self.addr);
        ip(
            &[
                "-n", sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
            &what,
        )?;
        ip(
            &["-n", sw, "link", "set", veth, "master", "br0", "up"],
            &what,
        )?;
        ip(&["-n", n, "link", "set", "lo", "up"], &what)?;
        ip(&["-n", n, "addr", "add", &cidr, "dev", "eth0"], &what)?;
        ip(&["-n", n, "link", "set", "eth0", "up"], &what)?;
        self.make_root()
    }

    /// The host's root directory and its usual subdirectories (also after
    /// a reinstall wiped it).
    pub(crate) fn make_root(&self) -> anyhow::Result<()> {
        crate::rig::make_dir(&self.root, 0o755)?;
        for dir in ["home", "run", "pg", "mysql", "etc"] {
            crate::rig::make_dir(&self.root.join(dir), 0o755)?;
        }
        crate::rig::make_dir(&self.root.join("agent"), 0o700)
    }

    /// The host's name as the test gave it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The namespace's full name (`ip netns exec <name> ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory under which the agent finds accounts (`<root>/home`).
    pub fn accounts_dir(&self) -> PathBuf {
        self.root.join("home")
    }

    /// The switch side of the host's veth pair (in the switch namespace).
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// A command that runs `program` inside this host (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `ip -n <namespace> ARGS` (addresses, routes, neighbours), an
    /// error unless it succeeds; returns stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all, &format!("host {}", self.host))
    }

    /// Cuts the host off the network: its switch port goes down, as if its
    /// cable were pulled. Processes inside keep running.
    pub fn link_down(&self) -> anyhow::Result<()> {
        let what = format!("taking host {}'s link down", self.host);
        ip(
            &["-n", &self.switch, "link", "set", &self.veth, "down"],
            &what,
        )
        .map(drop)
    }

    /// Plugs the host back in.
    pub fn link_up(&self) -> anyhow::Result<()> {
        let what = format!("bringing host {}'s link up", self.host);
        ip(
            &["-n", &self.switch, "link", "set", &self.veth, "up"],
            &what,
        )
        .map(drop)
    }

    /// Runs `f` on a new thread that first enters this namespace, and
    /// returns its result. Sockets created there, and threads spawned from
    /// there, stay in this namespace. A panic in `f` is resumed here.
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, || -> anyhow::Result<T> {
                    let file =
                        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering namespace {}", self.name))?;
                    Ok(f())
                })
                .context("spawning a thread")?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs an async block inside this namespace on a current-thread tokio
    /// runtime of its own, built on a new thread that entered the namespace
    /// first; returns its result. Every socket the future opens (tonic
    /// channels, tokio-postgres connections) lives in this namespace, so
    /// build clients inside the closure, and do not carry them out: they
    /// die with the runtime when this returns.
    pub fn run_in<F, Fut, T>(&self, make_future: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>>,
        T: Send,
    {
        self.in_namespace(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?;
            runtime.block_on(make_future())
        })?
    }

    /// Whether a TCP connection from inside this namespace to `addr`
    /// succeeds within `timeout`.
    pub fn tcp_connects(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> anyhow::Result<bool> {
        self.in_namespace(|| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
    }
}

/// Creates a named namespace. Parallel `ip netns add` race on the first
/// mount of /run/netns, so this runs under the machine-wide lock.
pub(crate) fn add_namespace(name: &str) -> anyhow::Result<()> {
    let _lock = crate::install::machine_lock()?;
    ip(
        &["netns", "add", name],
        &format!("creating namespace {name}"),
    )
    .map(drop)
}

/// Runs `ip ARGS`; stdout, or an error naming `what` and ip's complaint.
pub(crate) fn ip(args: &[&str], what: &str) -> anyhow::Result<String> {
    run_checked(Command::new("ip").args(args), what)
}
