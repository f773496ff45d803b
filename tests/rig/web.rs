//! The web stack of a host: its one nginx, its site definitions, the PHP
//! the agent's pools run, and HTTP requests from the client namespace.
//!
//! Owns: `<host root>/etc/nginx/nginx.conf` (pid `<root>/run/nginx.pid`,
//! logs and temporary files under `<root>/nginx/`, a default server
//! answering 404, and `include <root>/etc/nginx/sites/*.conf`, the
//! directory of server blocks the agent writes), starting nginx inside the
//! host's namespace; the definition files the panel would write
//! (`<root>/etc/sites/<account>.toml`); the wrapper that runs Debian 13's
//! PHP 8.4 FPM chrooted like MariaDB 11.8 (`mariadb.rs`); the control
//! groups the agent makes for the host's accounts, thawed and removed at
//! teardown. Does not start pools: the agent does (`StartSites`).
//!
//! Stacks: `2024.1` (the old one) is Debian 12's PHP 8.2; `2026.1` (the
//! new one) is PHP 8.4 from [`TRIXIE_DIR`].

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::mariadb::TRIXIE_DIR;
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir, set_mode};

/// Where a host's account groups are on the machine: under cgroup2's
/// root, or v1's freezer.
fn host_group_base(namespace: &str) -> PathBuf {
    let system = PathBuf::from("/sys/fs/cgroup");
    let hierarchy = match system.join("cgroup.controllers").exists() {
        true => system,
        false => system.join("freezer"),
    };
    hierarchy.join(format!("navette-{namespace}"))
}

/// Where the rig mounts the freezer hierarchy again for agents: `ip netns
/// exec` mounts a fresh `/sys` for the namespace, without the machine's
/// cgroup mounts, so agents get them from here (`[sites] cgroup_mount`).
pub const AGENT_CGROUP_MOUNT: &str = "/run/navette-rig/cgroup";

/// Mounts the machine's freezer hierarchy again at [`AGENT_CGROUP_MOUNT`]
/// unless it is there: cgroup v1's freezer at `<mount>/freezer`, or the
/// cgroup2 hierarchy at `<mount>` (the same hierarchy: groups made there
/// are the ones under `/sys/fs/cgroup`). On a machine with neither, or
/// where mounting fails, agents keep `/sys/fs/cgroup` and only their
/// `StartSites` fails, saying why; every other test runs as before.
pub(crate) fn ensure_agent_cgroup_mount() -> anyhow::Result<PathBuf> {
    let system = PathBuf::from("/sys/fs/cgroup");
    let mount = PathBuf::from(AGENT_CGROUP_MOUNT);
    let (kind, options, target, probe) = if system.join("cgroup.controllers").exists() {
        (
            "cgroup2",
            None,
            mount.clone(),
            mount.join("cgroup.controllers"),
        )
    } else if system.join("freezer").join("cgroup.procs").exists() {
        let freezer = mount.join("freezer");
        (
            "cgroup",
            Some("freezer"),
            freezer.clone(),
            freezer.join("cgroup.procs"),
        )
    } else {
        return Ok(system);
    };
    if probe.exists() {
        return Ok(mount);
    }
    let _lock = crate::install::machine_lock()?;
    if probe.exists() {
        return Ok(mount);
    }
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let mut command = Command::new("mount");
    command.args(["-t", kind]);
    if let Some(options) = options {
        command.args(["-o", options]);
    }
    command.arg("navette-cgroup").arg(&target);
    match crate::install::run_checked(&mut command, "mounting the cgroup hierarchy for agents") {
        Ok(_) => Ok(mount),
        Err(error) => {
            eprintln!("navette rig: {error:#}; agents keep /sys/fs/cgroup");
            Ok(system)
        }
    }
}

/// The host's web server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebServer {
    host: Netns,
    process: ChildProcess,
}

impl Netns {
    /// Where the agent writes server blocks (`[sites] server_blocks_dir`).
    pub fn server_blocks_dir(&self) -> PathBuf {
        self.root.join("etc").join("nginx").join("sites")
    }

    /// Where the panel's site definitions are (`[sites] definitions_dir`).
    pub fn site_definitions_dir(&self) -> PathBuf {
        self.root.join("etc").join("sites")
    }

    /// The web server's pid file (`[sites] web_server_pid_file`).
    pub fn web_server_pid_file(&self) -> PathBuf {
        self.root.join("run").join("nginx.pid")
    }

    /// The agent's run directory for sites (`[sites] run_dir`).
    pub fn sites_run_dir(&self) -> PathBuf {
        self.root.join("run").join("sites")
    }

    /// The host's cgroup base for its accounts (`[sites] cgroup_base`):
    /// unique per host, as rigs run in parallel with the same accounts.
    pub fn cgroup_base(&self) -> String {
        format!("navette-{}", self.name)
    }

    /// Starts the host's nginx on port 80 of its address and waits until
    /// it answers.
    pub fn start_web_server(&self, rig: &Rig) -> anyhow::Result<WebServer> {
        let prefix = self.root.join("nginx");
        make_dir(&prefix.join("tmp"), 0o755)?;
        make_dir(&self.server_blocks_dir(), 0o755)?;
        let config = self.root.join("etc").join("nginx").join("nginx.conf");
        let text = format!(
            "# The web server of rig host {host}.\n\
             user www-data;\n\
             worker_processes 1;\n\
             pid {pid};\n\
             error_log {prefix}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n    \
               access_log {prefix}/access.log;\n    \
               client_body_temp_path {prefix}/tmp/body;\n    \
               proxy_temp_path {prefix}/tmp/proxy;\n    \
               fastcgi_temp_path {prefix}/tmp/fastcgi;\n    \
               uwsgi_temp_path {prefix}/tmp/uwsgi;\n    \
               scgi_temp_path {prefix}/tmp/scgi;\n    \
               server {{ listen 80 default_server; return 404 \"no site here\\n\"; }}\n    \
               include {blocks}/*.conf;\n\
             }}\n",
            host = self.host,
            pid = self.web_server_pid_file().display(),
            prefix = prefix.display(),
            blocks = self.server_blocks_dir().display(),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let process = {
            let (netns, prefix, config) = (self.clone(), prefix.clone(), config.clone());
            rig.spawn(self, "nginx", move || {
                let mut command = netns.command("/usr/sbin/nginx");
                command
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&config)
                    .args(["-g", "daemon off;"]);
                command
            })?
        };
        let server = WebServer {
            host: self.clone(),
            process,
        };
        crate::controller::wait_listening(
            self,
            &server.process,
            &[SocketAddrV4::new(self.addr, 80)],
        )?;
        Ok(server)
    }

    /// The FPM command of `stack_version` for the agent's config: Debian
    /// 12's PHP 8.2, or for `2026.*` a wrapper (written now) running PHP
    /// 8.4 chrooted into [`TRIXIE_DIR`], with this host's root
    /// bind-mounted at its own path so that homes, sockets and the
    /// agent's pool files have the same paths inside.
    pub fn fpm_command(&self, stack_version: &str) -> anyhow::Result<Vec<String>> {
        if !stack_version.starts_with("2026") {
            return Ok(vec!["/usr/sbin/php-fpm8.2".to_owned()]);
        }
        let wrapper = self.root.join("etc").join("php-fpm8.4");
        let script = format!(
            r#"#!/bin/sh
# PHP 8.4 FPM from Debian 13, chrooted, with this host's paths unchanged.
exec unshare --mount --propagation private sh -ec '
tree=$1 root=$2; shift 2
case $root in /tmp/*) mount -t tmpfs -o mode=1777 tmpfs "$tree/tmp" ;; esac
mkdir -p "$tree$root"
mount --bind "$root" "$tree$root"
mount --rbind /dev "$tree/dev"
mount -t proc proc "$tree/proc"
exec chroot "$tree" /usr/sbin/php-fpm8.4 "$@"' sh {tree} {root} "$@"
"#,
            tree = TRIXIE_DIR,
            root = self.root.display(),
        );
        std::fs::write(&wrapper, script)
            .with_context(|| format!("writing {}", wrapper.display()))?;
        set_mode(&wrapper, 0o755)?;
        Ok(vec![wrapper.display().to_string()])
    }

    /// `curl` from the client namespace: GET `http://<domain><path>` sent
    /// to this host's address (as a resolver would point it), at most
    /// `timeout`; returns (status, body). A connection failure is status 0.
    pub fn http_get(
        &self,
        rig: &Rig,
        domain: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<(u16, String)> {
        let mut command = rig.client().command("curl");
        command
            .args(["--silent", "--show-error", "--max-time"])
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .arg("--resolve")
            .arg(format!("{domain}:80:{}", self.addr))
            .args(["--write-out", "\n%{http_code}"])
            .arg(format!("http://{domain}{path}"));
        http_output(&mut command)
    }
}

/// Runs a curl whose last output line is the status code.
fn http_output(command: &mut Command) -> anyhow::Result<(u16, String)> {
    let output = command.output().context("running curl")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_ref()));
    let code = code.trim().parse().unwrap_or(0);
    Ok((code, body.to_owned()))
}

impl WebServer {
    pub fn host(&self) -> &Netns {
        &self.host
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Stops nginx (SIGQUIT: graceful).
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGQUIT, Duration::from_secs(5));
    }
}

/// Writes `<root>/etc/sites/<account>.toml` with one PHP site.
pub(crate) fn write_site_definition(
    host: &Netns,
    account: &str,
    domains: &[String],
    document_root: &str,
) -> anyhow::Result<()> {
    let dir = host.site_definitions_dir();
    make_dir(&dir, 0o755)?;
    let list: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    let text = format!(
        "# Sites of account {account}, as the hosting panel writes them.\n\
         [[site]]\ndomains = [{}]\ndocument_root = {document_root:?}\nruntime = \"php\"\n",
        list.join(", ")
    );
    let path = dir.join(format!("{account}.toml"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Thaws every account group of the host (a frozen process cannot die),
/// for teardown before the kills.
pub(crate) fn thaw_host_groups(namespace: &str) {
    let Ok(entries) = std::fs::read_dir(host_group_base(namespace)) else {
        return;
    };
    for entry in entries.flatten() {
        let (v1, v2) = (
            entry.path().join("freezer.state"),
            entry.path().join("cgroup.freeze"),
        );
        if v1.exists() {
            let _ = std::fs::write(&v1, "THAWED");
        } else if v2.exists() {
            let _ = std::fs::write(&v2, "0");
        }
    }
}

/// Removes the host's (now empty) account groups and their base.
pub(crate) fn remove_host_groups(namespace: &str) {
    let base = host_group_base(namespace);
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir()
            && let Err(error) = std::fs::remove_dir(entry.path())
        {
            eprintln!("navette rig: removing {}: {error}", entry.path().display());
        }
    }
    let _ = std::fs::remove_dir(&base);
}
