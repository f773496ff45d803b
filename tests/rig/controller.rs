//! The real `navette-controller` in a host of the rig.
//!
//! Owns: the controller's state database (a PostgreSQL 15 in the
//! controller's namespace, role and database `navette`, reached over its
//! unix socket), its config file, `ca init`, the operator and panel
//! certificates (`cert issue`), and the `run` process with its readiness
//! check. Knows the controller only through its command line and config
//! file, never through its code.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::install::{navette_binary, run_checked, workspace_dir};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir};
use crate::{PgVersion, Postgres};

/// How long the controller or an agent may take to listen.
pub(crate) const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the rig's controller config says; `Default` gives the values of a
/// normal test.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    pub api_port: u16,
    pub enrolment_port: u16,
    pub agent_certificate_ttl_secs: u64,
    pub heartbeat_timeout_secs: u64,
    pub join_token_ttl_secs: u64,
    /// Migration catalogue; `None` means `<workspace>/controller/catalogue`.
    pub catalogue_dir: Option<PathBuf>,
    /// The `[log] level` filter.
    pub log_level: String,
    /// `[database] statement_timeout_secs` and `pool_wait_timeout_secs`.
    pub statement_timeout_secs: u64,
    pub pool_wait_timeout_secs: u64,
    /// `[metrics] listen` is the controller's address and this port.
    pub metrics_port: u16,
    /// More of the configuration, as TOML appended to the file (a
    /// `[migrations]` section, say).
    pub extra_config: String,
}

impl Default for ControllerSpec {
    fn default() -> Self {
        ControllerSpec {
            api_port: 7443,
            enrolment_port: 7444,
            agent_certificate_ttl_secs: 86_400,
            heartbeat_timeout_secs: 15,
            join_token_ttl_secs: 3_600,
            catalogue_dir: None,
            log_level: "info,navette_controller=debug".to_owned(),
            statement_timeout_secs: 30,
            pool_wait_timeout_secs: 10,
            metrics_port: 9464,
            extra_config: String::new(),
        }
    }
}

/// A certificate and its key, as `cert issue` writes them.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a client needs to call the controller.
#[derive(Clone, Debug)]
pub struct ControllerAccess {
    /// The mTLS API (operators, panel, agents).
    pub api: SocketAddrV4,
    /// The enrolment listener (no client certificate).
    pub enrolment: SocketAddrV4,
    /// `<ca_dir>/ca.pem`.
    pub ca_file: PathBuf,
    pub operator: CertPair,
    pub panel: CertPair,
}

impl ControllerAccess {
    /// A lazily connecting tonic channel to the API presenting `cert`.
    /// Call it inside [`Netns::run_in`] (it needs a runtime, and its
    /// sockets belong to the namespace it runs in).
    pub fn channel(&self, cert: &CertPair) -> anyhow::Result<tonic::transport::Channel> {
        use navette_proto::tls;
        tls::install_crypto_provider();
        let roots = tls::load_ca_roots(&self.ca_file)?;
        let identity = tls::Identity::load(&cert.cert, &cert.key)?;
        let config = tls::client_config(roots, Some(identity))?;
        let channel = tls::channel(
            SocketAddr::V4(self.api),
            navette_proto::identity::CONTROLLER_SERVER_NAME,
            config,
        )?;
        Ok(channel)
    }

    /// [`ControllerAccess::channel`] with the operator certificate.
    pub fn operator_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        self.channel(&self.operator)
    }

    /// [`ControllerAccess::channel`] with the panel certificate.
    pub fn panel_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        self.channel(&self.panel)
    }
}

#[derive(Serialize)]
struct ConfigFile {
    listen: ListenSection,
    database: DatabaseSection,
    tls: TlsSection,
    hosts: HostsSection,
    catalogue: CatalogueSection,
    log: LogSection,
    metrics: MetricsSection,
}

#[derive(Serialize)]
struct ListenSection {
    api: String,
    enrolment: String,
}

#[derive(Serialize)]
struct DatabaseSection {
    url: String,
    statement_timeout_secs: u64,
    pool_wait_timeout_secs: u64,
}

#[derive(Serialize)]
struct TlsSection {
    ca_dir: PathBuf,
    server_names: Vec<String>,
    agent_certificate_ttl_secs: u64,
}

#[derive(Serialize)]
struct HostsSection {
    heartbeat_timeout_secs: u64,
    join_token_ttl_secs: u64,
}

#[derive(Serialize)]
struct CatalogueSection {
    dir: PathBuf,
}

#[derive(Serialize)]
struct LogSection {
    format: String,
    level: String,
}

/// `[metrics]`, in the controller's config and the agents'.
#[derive(Serialize)]
pub(crate) struct MetricsSection {
    pub(crate) listen: String,
}

/// The running controller. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Controller {
    host: Netns,
    binary: PathBuf,
    config: PathBuf,
    state_db: Postgres,
    access: ControllerAccess,
    /// Where it serves `GET /metrics`.
    metrics: SocketAddrV4,
    process: ChildProcess,
}

impl Rig {
    /// Starts the controller on `host`: its state database, config, CA,
    /// operator and panel certificates, then `run`; waits until both
    /// listeners accept TCP. The rig then knows how to reach it
    /// ([`Rig::controller_access`], [`Rig::grpcurl`]).
    pub fn start_controller(
        &self,
        host: &Netns,
        spec: ControllerSpec,
    ) -> anyhow::Result<Controller> {
        let binary = navette_binary("navette-controller")?;
        let state_db = host.start_postgres(self, PgVersion::V15, 5432)?;
        state_db
            .psql(
                "postgres",
                "SELECT 'CREATE ROLE navette LOGIN' \
                 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'navette') \\gexec\n\
                 SELECT 'CREATE DATABASE navette OWNER navette' \
                 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'navette') \\gexec\n",
            )
            .context("creating the controller's state database")?;
        let ca_dir = host.root.join("ca");
        make_dir(&ca_dir, 0o700)?;
        let access = ControllerAccess {
            api: SocketAddrV4::new(host.addr, spec.api_port),
            enrolment: SocketAddrV4::new(host.addr, spec.enrolment_port),
            ca_file: ca_dir.join("ca.pem"),
            operator: cert_pair(&host.root, "operator"),
            panel: cert_pair(&host.root, "panel"),
        };
        let file = ConfigFile {
            listen: ListenSection {
                api: access.api.to_string(),
                enrolment: access.enrolment.to_string(),
            },
            database: DatabaseSection {
                url: format!(
                    "host={} port={} user=navette dbname=navette",
                    state_db.socket_dir().display(),
                    state_db.port()
                ),
                statement_timeout_secs: spec.statement_timeout_secs,
                pool_wait_timeout_secs: spec.pool_wait_timeout_secs,
            },
            tls: TlsSection {
                ca_dir: ca_dir.clone(),
                server_names: vec![host.addr.to_string()],
                agent_certificate_ttl_secs: spec.agent_certificate_ttl_secs,
            },
            hosts: HostsSection {
                heartbeat_timeout_secs: spec.heartbeat_timeout_secs,
                join_token_ttl_secs: spec.join_token_ttl_secs,
            },
            catalogue: CatalogueSection {
                dir: spec
                    .catalogue_dir
                    .clone()
                    .unwrap_or_else(|| workspace_dir().join("controller").join("catalogue")),
            },
            log: LogSection {
                format: "json".to_owned(),
                level: spec.log_level.clone(),
            },
            metrics: MetricsSection {
                listen: SocketAddrV4::new(host.addr, spec.metrics_port).to_string(),
            },
        };
        let config = host.root.join("etc").join("controller.toml");
        let mut text = toml::to_string(&file).context("writing the controller config")?;
        text.push_str(&spec.extra_config);
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

        let command = {
            let (host, binary, config) = (host.clone(), binary.clone(), config.clone());
            move |args: &[&str]| {
                let mut command = host.command(&binary);
                command.arg("--config").arg(&config).args(args);
                command
            }
        };
        if !access.ca_file.exists() {
            run_checked(&mut command(&["ca", "init"]), "navette-controller ca init")?;
        }
        let certs_dir = host.root.join("etc").join("certs");
        make_dir(&certs_dir, 0o700)?;
        for role in ["operator", "panel"] {
            let dir = certs_dir.to_string_lossy();
            let args = [
                "cert",
                "issue",
                "--role",
                role,
                "--name",
                role,
                "--out-dir",
                &dir,
            ];
            run_checked(
                &mut command(&args),
                &format!("navette-controller cert issue ({role})"),
            )?;
        }
        let process = self.spawn(host, "controller", move || command(&["run"]))?;
        let controller = Controller {
            host: host.clone(),
            binary,
            config,
            state_db,
            access: access.clone(),
            metrics: SocketAddrV4::new(host.addr, spec.metrics_port),
            process,
        };
        controller.wait_ready()?;
        self.set_controller(access);
        Ok(controller)
    }
}

fn cert_pair(root: &Path, name: &str) -> CertPair {
    let dir = root.join("etc").join("certs");
    CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

impl Controller {
    /// Starts a second controller sharing this one's database and CA, in
    /// the same host, listening on other ports: what an operator runs for
    /// availability. Agents keep talking to the first one; both run
    /// workflow steps. Its metrics port is as far from its API port as the
    /// first's.
    pub fn start_second(
        &self,
        rig: &Rig,
        api_port: u16,
        enrolment_port: u16,
    ) -> anyhow::Result<Controller> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let text = text
            .replace(
                &format!(":{}\"", self.access.api.port()),
                &format!(":{api_port}\""),
            )
            .replace(
                &format!(":{}\"", self.access.enrolment.port()),
                &format!(":{enrolment_port}\""),
            );
        let metrics_port =
            api_port.wrapping_add(self.metrics.port().wrapping_sub(self.access.api.port()));
        let text = text.replace(
            &format!(":{}\"", self.metrics.port()),
            &format!(":{metrics_port}\""),
        );
        let config = self
            .config
            .with_file_name(format!("controller-{api_port}.toml"));
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut access = self.access.clone();
        access.api = SocketAddrV4::new(*self.access.api.ip(), api_port);
        access.enrolment = SocketAddrV4::new(*self.access.enrolment.ip(), enrolment_port);
        let command = {
            let (host, binary, config) = (self.host.clone(), self.binary.clone(), config.clone());
            move || {
                let mut command = host.command(&binary);
                command.arg("--config").arg(&config).arg("run");
                command
            }
        };
        let process = rig.spawn(&self.host, &format!("controller-{api_port}"), command)?;
        let second = Controller {
            host: self.host.clone(),
            binary: self.binary.clone(),
            config,
            state_db: self.state_db.clone(),
            access,
            metrics: SocketAddrV4::new(*self.metrics.ip(), metrics_port),
            process,
        };
        second.wait_ready()?;
        Ok(second)
    }

    pub fn host(&self) -> &Netns {
        &self.host
    }

    pub fn access(&self) -> &ControllerAccess {
        &self.access
    }

    /// Where the controller serves `GET /metrics` (plain HTTP).
    pub fn metrics_addr(&self) -> SocketAddrV4 {
        self.metrics
    }

    /// The controller's metrics now, fetched with a plain HTTP GET from
    /// inside its namespace.
    pub fn scrape_metrics(&self) -> anyhow::Result<crate::Scrape> {
        crate::scrape::scrape(&self.host, self.metrics)
    }

    /// The controller's config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The controller's own PostgreSQL 15 (database `navette`).
    pub fn state_db(&self) -> &Postgres {
        &self.state_db
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// `navette-controller --config <config> ARGS` inside the controller's
    /// namespace, for one-shot subcommands.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.host.command(&self.binary);
        command.arg("--config").arg(&self.config).args(args);
        command
    }

    /// Issues a certificate (`cert issue --role ROLE --name NAME`) into
    /// `<controller root>/etc/certs/`.
    pub fn issue_certificate(&self, role: &str, name: &str) -> anyhow::Result<CertPair> {
        let dir = self.host.root.join("etc").join("certs");
        let dir_text = dir.to_string_lossy();
        let args = [
            "cert",
            "issue",
            "--role",
            role,
            "--name",
            name,
            "--out-dir",
            &dir_text,
        ];
        run_checked(
            &mut self.command(&args),
            &format!("navette-controller cert issue ({role} {name})"),
        )?;
        Ok(cert_pair(&self.host.root, name))
    }

    /// Kills the controller (SIGKILL), as a crash would.
    pub fn kill9(&self) {
        self.process.kill9();
    }

    /// Graceful stop (SIGTERM), SIGKILL after 10 s.
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGTERM, Duration::from_secs(10));
    }

    /// Kills the controller if it runs and starts it again with the same
    /// config; waits until it listens.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.process.restart()?;
        self.wait_ready()
    }

    /// Waits until its three listeners (API, enrolment, metrics) accept
    /// TCP.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        wait_listening(
            &self.host,
            &self.process,
            &[self.access.api, self.access.enrolment, self.metrics],
        )
    }
}

/// Waits until `process` (running in `netns`) accepts TCP on every address
/// in `addrs`; an error with the log tail if it exits or takes too long.
pub(crate) fn wait_listening(
    netns: &Netns,
    process: &ChildProcess,
    addrs: &[SocketAddrV4],
) -> anyhow::Result<()> {
    let started = Instant::now();
    for addr in addrs {
        loop {
            process.check_running()?;
            if netns.tcp_connects(SocketAddr::V4(*addr), Duration::from_millis(500))? {
                break;
            }
            if started.elapsed() > LISTEN_TIMEOUT {
                bail!(
                    "{} does not accept connections on {addr} after {LISTEN_TIMEOUT:?}; {}",
                    process.label(),
                    process.log_tail_message()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
