//! MariaDB servers in a host: Debian 12's 10.11, or Debian 13's 11.8.
//!
//! Owns: `mariadb-install-db` into `<host root>/mysql/<port>`, starting
//! `mariadbd` inside the host's namespace (socket in
//! `<host root>/run/mysqld/`, listening on the host's address), readiness,
//! and an SQL helper for `root` over the socket. Every server starts with
//! `--no-defaults`: nothing of the machine's `/etc/mysql` leaks in.
//!
//! MariaDB 11.8 runs from the Debian 13 tree `tests/setup.sh` bootstraps
//! ([`TRIXIE_DIR`]), chrooted: each of its commands runs in a mount
//! namespace of its own (`unshare --mount`) where the host's root
//! directory is bind-mounted at the same path inside the tree, so data
//! directory and socket have the same paths inside and out, and the mounts
//! end with the process. Its `mysql` user has the machine's uid and gid.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::install::{run_checked, run_with_input};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir_owned};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Debian 13 tree holding MariaDB 11.8 (`tests/setup.sh`).
pub const TRIXIE_DIR: &str = "/opt/navette-rig/trixie";

/// Which MariaDB a server runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MariaDbRelease {
    /// Debian 12's 10.11, the old hosts' version.
    #[default]
    V10_11,
    /// Debian 13's 11.8 LTS, the version migrations go to.
    V11_8,
}

/// How to start a server; `Default` is 10.11 on port 3306 of the host's
/// address.
#[derive(Clone, Debug)]
pub struct MariaDbSpec {
    pub release: MariaDbRelease,
    pub port: u16,
    /// `--bind-address`; `None` means the host's address.
    pub bind_address: Option<String>,
    /// Extra `mariadbd` options (`"--log-bin=mysql-bin"`).
    pub extra_args: Vec<String>,
    /// `Some(server id)`: the binary log on, in ROW format, with that
    /// server id, as a replication source needs (and a replica gets a
    /// server id other than its source's). `None`: no binary log.
    pub row_binlog: Option<u32>,
}

impl MariaDbSpec {
    /// A migration's source: 10.11 with the binary log in ROW format,
    /// server id 1.
    pub fn replication_source() -> MariaDbSpec {
        MariaDbSpec {
            row_binlog: Some(1),
            ..MariaDbSpec::default()
        }
    }

    /// A migration's target: 11.8 with a server id of its own (2: a
    /// replica skips the events of its own id as its own).
    pub fn replica_11_8() -> MariaDbSpec {
        MariaDbSpec {
            release: MariaDbRelease::V11_8,
            extra_args: vec!["--server-id=2".to_owned()],
            ..MariaDbSpec::default()
        }
    }
}

impl Default for MariaDbSpec {
    fn default() -> Self {
        MariaDbSpec {
            release: MariaDbRelease::V10_11,
            port: 3306,
            bind_address: None,
            extra_args: Vec::new(),
            row_binlog: None,
        }
    }
}

/// A MariaDB server running in a host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MariaDb {
    host: Netns,
    port: u16,
    data_dir: PathBuf,
    socket: PathBuf,
    process: ChildProcess,
}

impl Netns {
    /// Starts MariaDB on port 3306 of this host's address.
    pub fn start_mariadb(&self, rig: &Rig) -> anyhow::Result<MariaDb> {
        self.start_mariadb_with(rig, MariaDbSpec::default())
    }

    /// Starts MariaDB 11.8 on port 3306 of this host's address.
    pub fn start_mariadb_11_8(&self, rig: &Rig) -> anyhow::Result<MariaDb> {
        self.start_mariadb_with(
            rig,
            MariaDbSpec {
                release: MariaDbRelease::V11_8,
                ..MariaDbSpec::default()
            },
        )
    }

    /// A command running `program` of `release` inside this host's
    /// namespace: directly for 10.11; for 11.8 chrooted into
    /// [`TRIXIE_DIR`] with this host's root directory bind-mounted at its
    /// own path (see the module's documentation).
    fn mariadb_command(&self, release: MariaDbRelease, program: &str) -> Command {
        match release {
            MariaDbRelease::V10_11 => self.command(program),
            MariaDbRelease::V11_8 => {
                let root = self.root.display().to_string();
                let mut command = self.command("unshare");
                // `sh` execs `chroot`, which execs the program: the
                // process the rig watches and kills is the server itself.
                command.args(["--mount", "--propagation", "private", "sh", "-ec"]);
                command.arg(
                    r#"tree=$1 root=$2; shift 2
case $root in /tmp/*) mount -t tmpfs -o mode=1777 tmpfs "$tree/tmp" ;; esac
mkdir -p "$tree$root"
mount --bind "$root" "$tree$root"
mount --rbind /dev "$tree/dev"
mount -t proc proc "$tree/proc"
exec chroot "$tree" "$@""#,
                );
                command.args(["sh", TRIXIE_DIR, &root, program]);
                command
            }
        }
    }

    /// Installs the system tables (unless the data directory exists), starts
    /// `mariadbd` and waits until it answers.
    pub fn start_mariadb_with(&self, rig: &Rig, spec: MariaDbSpec) -> anyhow::Result<MariaDb> {
        let data_dir = self.root.join("mysql").join(spec.port.to_string());
        let run_dir = self.root.join("run").join("mysqld");
        make_dir_owned(&run_dir, 0o755, "mysql")?;
        // The first server of a host gets the conventional socket name.
        let socket = if spec.port == 3306 {
            run_dir.join("mysqld.sock")
        } else {
            run_dir.join(format!("mysqld-{}.sock", spec.port))
        };
        let what = format!("MariaDB on host {}", self.host);
        // A temporary directory of its own: a starting mariadbd deletes the
        // `#sql*` files it finds in its tmpdir, which would break another
        // instance's bootstrap running at the same time.
        let tmp_dir = self.root.join("mysql").join(format!("tmp-{}", spec.port));
        make_dir_owned(&tmp_dir, 0o700, "mysql")?;
        if !data_dir.join("mysql").exists() {
            make_dir_owned(&data_dir, 0o700, "mysql")?;
            let mut install = self.mariadb_command(spec.release, "mariadb-install-db");
            install
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data_dir.display()))
                .arg(format!("--tmpdir={}", tmp_dir.display()))
                .args(["--user=mysql", "--auth-root-authentication-method=normal"])
                .args(["--skip-test-db", "--skip-name-resolve"]);
            if spec.release == MariaDbRelease::V11_8 {
                // The chroot's host name does not resolve.
                install.arg("--force");
            }
            run_checked(&mut install, &format!("{what}: mariadb-install-db"))?;
        }
        let bind = spec
            .bind_address
            .clone()
            .unwrap_or_else(|| self.addr.to_string());
        let process = {
            let (netns, data_dir, socket) = (self.clone(), data_dir.clone(), socket.clone());
            let tmp_dir = tmp_dir.clone();
            let pid_file = run_dir.join(format!("mysqld-{}.pid", spec.port));
            let port = spec.port;
            let mut extra = spec.extra_args.clone();
            if let Some(server_id) = spec.row_binlog {
                // After `--skip-log-bin`: the later option wins.
                extra.splice(
                    0..0,
                    [
                        "--log-bin=mysql-bin".to_owned(),
                        "--binlog-format=ROW".to_owned(),
                        format!("--server-id={server_id}"),
                    ],
                );
            }
            let release = spec.release;
            rig.spawn(self, &format!("mariadb-{port}"), move || {
                let mut command = netns.mariadb_command(release, "/usr/sbin/mariadbd");
                command
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", data_dir.display()))
                    .arg(format!("--socket={}", socket.display()))
                    .arg(format!("--tmpdir={}", tmp_dir.display()))
                    .arg(format!("--pid-file={}", pid_file.display()))
                    .arg(format!("--port={port}"))
                    .arg(format!("--bind-address={bind}"))
                    .args(["--user=mysql", "--skip-name-resolve", "--skip-log-bin"])
                    .args([
                        "--innodb-buffer-pool-size=32M",
                        "--innodb-flush-log-at-trx-commit=0",
                    ])
                    .args(["--innodb-doublewrite=0", "--character-set-server=utf8mb4"])
                    .args(&extra);
                command
            })?
        };
        let server = MariaDb {
            host: self.clone(),
            port: spec.port,
            data_dir,
            socket,
            process,
        };
        server.wait_ready().with_context(|| what.clone())?;
        rig.register_mariadb(self, server.clone());
        Ok(server)
    }
}

impl MariaDb {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's address the server listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.host.addr
    }

    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The server's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Runs `sql` as `root` over the socket (`mariadb --batch
    /// --skip-column-names`); returns the output without its final newline.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut command = Command::new("mariadb");
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "--batch", "--skip-column-names"]);
        let what = format!("mariadb on host {}", self.host.host);
        let output = run_with_input(&mut command, sql, &what)?;
        Ok(output.trim_end_matches('\n').to_owned())
    }

    /// `SELECT VERSION()` ("10.11.6-MariaDB-0+deb12u1").
    pub fn server_version(&self) -> anyhow::Result<String> {
        self.sql("SELECT VERSION()")
    }

    /// Waits until the server answers a ping on its socket; an error with
    /// the log tail if it exits or takes longer than 30 s.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            let answered = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-u", "root", "--connect-timeout=1", "ping"])
                .output()
                .context("running mariadb-admin")?
                .status
                .success();
            if answered {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} does not answer after {READY_TIMEOUT:?}; {}",
                    self.process.label(),
                    self.process.log_tail_message()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clean shutdown (SIGTERM), SIGKILL after 15 s.
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGTERM, Duration::from_secs(15));
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill9(&self) {
        self.process.kill9();
    }

    /// Starts the server again after [`MariaDb::stop`] or
    /// [`MariaDb::kill9`], and waits until it is ready.
    pub fn start(&self) -> anyhow::Result<()> {
        self.process.start_again()?;
        self.wait_ready()
    }

    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.start()
    }
}
