//! PostgreSQL servers in a host: 15 from Debian, 18 from the wheel setup.sh
//! unpacked.
//!
//! Owns: initdb, the server configuration (listening on the host's address,
//! sockets in `<host root>/run/postgresql`, `wal_level=logical`, no fsync),
//! pg_hba (local trust, scram-sha-256 from 192.0.2.0/24), starting the server
//! as the `postgres` user inside the host's namespace, readiness, and a psql
//! helper for the superuser over the socket. PostgreSQL refuses to run as
//! root, so every data directory is owned by `postgres`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::install::{PG15_BIN, PG18_ROOT, run_checked, run_with_input};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir_owned};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL major versions the rig can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgVersion {
    /// Debian 12's PostgreSQL 15: the "old" stack.
    V15,
    /// PostgreSQL 18: the migration target.
    V18,
}

impl PgVersion {
    /// 15 or 18.
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V18 => 18,
        }
    }

    /// The directory holding `postgres`, `initdb`, `psql`, `pg_dump`...
    pub fn bin_dir(self) -> PathBuf {
        match self {
            PgVersion::V15 => PathBuf::from(PG15_BIN),
            PgVersion::V18 => Path::new(PG18_ROOT).join("bin"),
        }
    }

    /// A command running this version's `program` (`pg_dump`, `psql`...),
    /// with the library path PostgreSQL 18's binaries need.
    pub fn command(self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir().join(program));
        if let Some(path) = self.ld_library_path() {
            command.env("LD_LIBRARY_PATH", path);
        }
        command
    }

    /// `LD_LIBRARY_PATH` for this version's binaries, if they need one.
    pub fn ld_library_path(self) -> Option<String> {
        match self {
            PgVersion::V15 => None,
            PgVersion::V18 => Some(format!("{PG18_ROOT}/lib:{PG18_ROOT}/libs")),
        }
    }
}

/// How to start a server; [`PgSpec::new`] gives the usual one.
#[derive(Clone, Debug)]
pub struct PgSpec {
    pub version: PgVersion,
    pub port: u16,
    /// `listen_addresses`; `None` means the host's address.
    pub listen_addresses: Option<String>,
    /// Extra `postgresql.conf` lines (`"max_wal_senders = 20"`).
    pub extra_conf: Vec<String>,
}

impl PgSpec {
    pub fn new(version: PgVersion, port: u16) -> PgSpec {
        PgSpec {
            version,
            port,
            listen_addresses: None,
            extra_conf: Vec::new(),
        }
    }
}

/// A PostgreSQL server running in a host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Postgres {
    version: PgVersion,
    host: Netns,
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    process: ChildProcess,
}

impl Netns {
    /// Starts PostgreSQL `version` on this host's address and `port`; see
    /// [`Netns::start_postgres_with`].
    pub fn start_postgres(
        &self,
        rig: &Rig,
        version: PgVersion,
        port: u16,
    ) -> anyhow::Result<Postgres> {
        self.start_postgres_with(rig, PgSpec::new(version, port))
    }

    /// Initialises `<root>/pg/<port>` (unless it exists), configures and
    /// starts the server, and waits until it accepts connections.
    pub fn start_postgres_with(&self, rig: &Rig, spec: PgSpec) -> anyhow::Result<Postgres> {
        let version = spec.version;
        let data_dir = self.root.join("pg").join(spec.port.to_string());
        let socket_dir = self.root.join("run").join("postgresql");
        make_dir_owned(&socket_dir, 0o755, "postgres")?;
        let what = format!("PostgreSQL {} on host {}", version.major(), self.host);
        if !data_dir.join("PG_VERSION").exists() {
            make_dir_owned(&data_dir, 0o700, "postgres")?;
            initdb(version, &data_dir).with_context(|| format!("{what}: initdb"))?;
            configure(&spec, self.addr, &data_dir, &socket_dir).with_context(|| what.clone())?;
        }
        let postgres = {
            let (netns, data_dir) = (self.clone(), data_dir.clone());
            rig.spawn(
                self,
                &format!("postgres{}-{}", version.major(), spec.port),
                move || {
                    let mut command = netns.command("setpriv");
                    command
                        .args([
                            "--reuid=postgres",
                            "--regid=postgres",
                            "--init-groups",
                            "--",
                        ])
                        .arg(version.bin_dir().join("postgres"))
                        .arg("-D")
                        .arg(&data_dir)
                        .current_dir(&data_dir);
                    if let Some(path) = version.ld_library_path() {
                        command.env("LD_LIBRARY_PATH", path);
                    }
                    command
                },
            )?
        };
        let server = Postgres {
            version,
            host: self.clone(),
            port: spec.port,
            data_dir,
            socket_dir,
            process: postgres,
        };
        server.wait_ready().with_context(|| what.clone())?;
        rig.register_postgres(self, server.clone());
        Ok(server)
    }
}

/// Runs initdb as `postgres`: trust on the socket, scram-sha-256 over TCP.
fn initdb(version: PgVersion, data_dir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(version.bin_dir().join("initdb"))
        .arg("-D")
        .arg(data_dir)
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-U",
            "postgres",
        ])
        .args([
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .current_dir(data_dir);
    if let Some(path) = version.ld_library_path() {
        command.env("LD_LIBRARY_PATH", path);
    }
    run_checked(&mut command, "initdb").map(drop)
}

fn configure(
    spec: &PgSpec,
    addr: Ipv4Addr,
    data_dir: &Path,
    socket_dir: &Path,
) -> anyhow::Result<()> {
    let listen = spec
        .listen_addresses
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let mut conf = format!(
        "\n# navette rig\n\
         listen_addresses = '{listen}'\n\
         port = {port}\n\
         unix_socket_directories = '{socket}'\n\
         wal_level = logical\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         max_connections = 100\n\
         shared_buffers = 32MB\n\
         password_encryption = 'scram-sha-256'\n\
         log_line_prefix = '%m [%p] %u@%d '\n",
        port = spec.port,
        socket = socket_dir.display(),
    );
    for line in &spec.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    let path = data_dir.join("postgresql.conf");
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.push_str(&conf);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let hba = "# navette rig\n\
               local all all trust\n\
               local replication all trust\n\
               host all all 192.0.2.0/24 scram-sha-256\n\
               host replication all 192.0.2.0/24 scram-sha-256\n\
               host all all 127.0.0.1/32 scram-sha-256\n";
    let path = data_dir.join("pg_hba.conf");
    std::fs::write(&path, hba).with_context(|| format!("writing {}", path.display()))
}

impl Postgres {
    pub fn version(&self) -> PgVersion {
        self.version
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's address the server listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.host.addr
    }

    /// The host it runs on.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// `unix_socket_directories`: `<host root>/run/postgresql`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server process (pid, log, liveness).
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// A tokio-postgres / libpq connection string to `dbname` over TCP on
    /// the host's address, as a customer connects.
    pub fn tcp_config(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={} connect_timeout=5",
            self.address(),
            self.port,
            conn_value(user),
            conn_value(password),
            conn_value(dbname)
        )
    }

    /// Runs `sql` (one or more statements) in `db` as the `postgres`
    /// superuser over the socket (`psql -X -A -t -q -v ON_ERROR_STOP=1`);
    /// returns the output without its final newline.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut command = self.version.command("psql");
        command
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        let what = format!(
            "psql on PostgreSQL {} of host {}, database {db}",
            self.version.major(),
            self.host.host
        );
        let output = run_with_input(&mut command, sql, &what)?;
        Ok(output.trim_end_matches('\n').to_owned())
    }

    /// A `psql` session in `db` as the `postgres` superuser that stays
    /// open, reading statements as [`PsqlSession::send`] gives them (a
    /// transaction held open across a test's steps, a lock held).
    pub fn psql_session(&self, db: &str) -> anyhow::Result<PsqlSession> {
        let mut command = self.version.command("psql");
        command
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting a psql session in {db}"))?;
        Ok(PsqlSession { child })
    }

    /// `SHOW server_version` ("15.14", "18.1"...).
    pub fn server_version(&self) -> anyhow::Result<String> {
        self.psql("postgres", "SHOW server_version")
    }

    /// Waits until the server accepts connections on its socket; an error
    /// with the log tail if it exits or takes longer than 30 s.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            let status = self
                .version
                .command("pg_isready")
                .arg("-h")
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-q",
                    "-t",
                    "1",
                ])
                .status()
                .context("running pg_isready")?;
            if status.success() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} does not accept connections after {READY_TIMEOUT:?}; {}",
                    self.process.label(),
                    self.process.log_tail_message()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT), SIGKILL after 15 s.
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGINT, Duration::from_secs(15));
    }

    /// Kills the postmaster (SIGKILL), as a crash would; its backends exit
    /// when they notice.
    pub fn kill9(&self) {
        self.process.kill9();
    }

    /// Starts the server again after [`Postgres::stop`] or
    /// [`Postgres::kill9`], and waits until it is ready.
    pub fn start(&self) -> anyhow::Result<()> {
        self.process.start_again()?;
        self.wait_ready()
    }

    /// Stops (cleanly) and starts the server, e.g. after a configuration
    /// change.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.start()
    }
}

/// Quotes a libpq connection-string value.
fn conn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An open `psql` session ([`Postgres::psql_session`]); ended (its input
/// closed, then waited for) by [`PsqlSession::finish`], or killed when
/// dropped.
pub struct PsqlSession {
    child: std::process::Child,
}

impl PsqlSession {
    /// Sends `sql` (statements ending with `;`) to the session.
    pub fn send(&mut self, sql: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let input = self
            .child
            .stdin
            .as_mut()
            .context("the session's input is closed")?;
        input.write_all(sql.as_bytes())?;
        input.write_all(b"\n")?;
        input.flush()?;
        Ok(())
    }

    /// Closes the session's input and waits for it to end; an error if it
    /// failed (a statement refused).
    pub fn finish(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the psql session ended with {status}");
        Ok(())
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
