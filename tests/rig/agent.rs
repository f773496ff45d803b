//! The real `navette-agent` on a host of the rig.
//!
//! Owns: the agent's config file (`<host root>/etc/agent.toml`, naming the
//! host's database servers the rig started), `enrol --token`, and the `run`
//! process with its readiness check. Knows the agent only through its
//! command line and config file.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::controller::{MetricsSection, wait_listening};
use crate::install::{navette_binary, run_checked};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::Rig;

/// What kind of server a host is: on the join token (what the controller
/// uses) and in the agent config's `kind` (what the agent reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AgentKind {
    #[default]
    Shared,
    Dedicated,
    Vps,
    Transit,
    Test,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Shared => "shared",
            AgentKind::Dedicated => "dedicated",
            AgentKind::Vps => "vps",
            AgentKind::Transit => "transit",
            AgentKind::Test => "test",
        }
    }

    /// The `navette.v1.HostKind` value, as grpcurl's JSON names it.
    pub fn proto_name(self) -> &'static str {
        match self {
            AgentKind::Shared => "HOST_KIND_SHARED",
            AgentKind::Dedicated => "HOST_KIND_DEDICATED",
            AgentKind::Vps => "HOST_KIND_VPS",
            AgentKind::Transit => "HOST_KIND_TRANSIT",
            AgentKind::Test => "HOST_KIND_TEST",
        }
    }
}

/// How to start an agent. `Default` has an empty token: set one
/// (`AgentSpec { token, ..Default::default() }`).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub kind: AgentKind,
    /// The software stack the host runs ("2024.1").
    pub stack_version: String,
    /// The join token's secret, from [`Rig::create_join_token`].
    pub token: String,
    pub listen_port: u16,
    pub heartbeat_interval_secs: u64,
    pub inventory_interval_secs: u64,
    /// Run the agent under the shipped unit's restrictions, as systemd
    /// would (it is not PID 1 here): see [`unit_restrictions`].
    pub under_unit_restrictions: bool,
    /// `[metrics] listen` is the host's address and this port.
    pub metrics_port: u16,
    /// Test only: the transfer protocol versions the agent speaks
    /// (`[testing] transfer_protocols`), to play an agent of an older
    /// build; `None`: every version its build speaks.
    pub transfer_protocols: Option<Vec<u32>>,
    /// Test only: addresses the host takes are not announced
    /// (`[testing] skip_address_announcements`).
    pub skip_address_announcements: bool,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            kind: AgentKind::Shared,
            stack_version: "2024.1".to_owned(),
            token: String::new(),
            listen_port: 7445,
            heartbeat_interval_secs: 1,
            inventory_interval_secs: 2,
            under_unit_restrictions: false,
            metrics_port: 9465,
            transfer_protocols: None,
            skip_address_announcements: false,
        }
    }
}

/// The command prefix that applies `systemd/navette-agent.service`'s
/// `UMask=`, `CapabilityBoundingSet=` and `NoNewPrivileges=` to the
/// program after it (`sh -c 'umask ..; exec ..' setpriv ... --`). Its
/// other settings (file system and kernel protections, system call
/// filters) are not applied: `agent/tests/files_unit_restrictions.rs`
/// says which of them a copy does not depend on.
pub fn unit_restrictions() -> anyhow::Result<Vec<String>> {
    let path = crate::install::workspace_dir().join("systemd/navette-agent.service");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let setting = |key: &str| {
        text.lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    let capabilities = setting("CapabilityBoundingSet")
        .with_context(|| format!("{}: no CapabilityBoundingSet=", path.display()))?;
    let mut bounding = vec!["-all".to_owned()];
    for name in capabilities.split_whitespace() {
        let short = name
            .strip_prefix("CAP_")
            .with_context(|| format!("{}: {name} in CapabilityBoundingSet=", path.display()))?;
        bounding.push(format!("+{}", short.to_ascii_lowercase()));
    }
    let mut prefix = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#"umask "$0" && exec "$@""#.to_owned(),
        setting("UMask").unwrap_or("0022").to_owned(),
        "setpriv".to_owned(),
        format!("--bounding-set={}", bounding.join(",")),
    ];
    if setting("NoNewPrivileges") == Some("yes") {
        prefix.push("--no-new-privs".to_owned());
    }
    prefix.push("--".to_owned());
    Ok(prefix)
}

#[derive(Serialize)]
struct ConfigFile {
    kind: &'static str,
    stack_version: String,
    controller: String,
    enrolment: String,
    ca_file: PathBuf,
    listen: String,
    state_dir: PathBuf,
    accounts_dir: PathBuf,
    heartbeat_interval_secs: u64,
    inventory_interval_secs: u64,
    log_format: &'static str,
    postgresql: Vec<PostgresSection>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mariadb: Vec<MariaDbSection>,
    metrics: MetricsSection,
    sites: SitesSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    testing: Option<TestingSection>,
}

/// `[sites]`: everything under the host's root (see `web.rs`).
#[derive(Serialize)]
struct SitesSection {
    definitions_dir: PathBuf,
    run_dir: PathBuf,
    server_blocks_dir: PathBuf,
    web_server_pid_file: PathBuf,
    fpm_command: Vec<String>,
    cgroup_mount: PathBuf,
    cgroup_base: String,
}

/// `[testing]`: the agent's test-only settings.
#[derive(Serialize)]
struct TestingSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer_protocols: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skip_address_announcements: bool,
}

#[derive(Serialize)]
struct PostgresSection {
    name: String,
    host: PathBuf,
    port: u16,
    user: &'static str,
    public_address: String,
    bin_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    library_path: Option<String>,
}

#[derive(Serialize)]
struct MariaDbSection {
    name: String,
    socket: PathBuf,
    user: &'static str,
    public_address: String,
    port: u16,
}

/// A running agent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Agent {
    host: Netns,
    binary: PathBuf,
    config: PathBuf,
    listen: SocketAddrV4,
    /// Where it serves `GET /metrics`.
    metrics: SocketAddrV4,
    process: ChildProcess,
}

impl Rig {
    /// Writes `<host root>/etc/agent.toml` (naming the database servers
    /// started on the host so far), enrols with `spec.token`, starts
    /// `run`, and waits until the agent listens. Needs the controller.
    pub fn start_agent(&self, host: &Netns, spec: AgentSpec) -> anyhow::Result<Agent> {
        let binary = navette_binary("navette-agent")?;
        if spec.token.is_empty() {
            bail!(
                "agent on host {}: no join token (rig.create_join_token)",
                host.host
            );
        }
        let controller = self.controller_access()?;
        let servers = self.servers(host);
        let listen = SocketAddrV4::new(host.addr, spec.listen_port);
        let metrics = SocketAddrV4::new(host.addr, spec.metrics_port);
        let file = ConfigFile {
            kind: spec.kind.as_str(),
            stack_version: spec.stack_version.clone(),
            controller: controller.api.to_string(),
            enrolment: controller.enrolment.to_string(),
            ca_file: controller.ca_file.clone(),
            listen: listen.to_string(),
            state_dir: host.root.join("agent"),
            accounts_dir: host.accounts_dir(),
            heartbeat_interval_secs: spec.heartbeat_interval_secs,
            inventory_interval_secs: spec.inventory_interval_secs,
            log_format: "json",
            postgresql: servers
                .postgres
                .iter()
                .enumerate()
                .map(|(index, server)| PostgresSection {
                    name: server_name(index, "pg", server.port()),
                    host: server.socket_dir().to_path_buf(),
                    port: server.port(),
                    user: "postgres",
                    public_address: server.address().to_string(),
                    bin_dir: server.version().bin_dir(),
                    library_path: server.version().ld_library_path(),
                })
                .collect(),
            mariadb: servers
                .mariadb
                .iter()
                .enumerate()
                .map(|(index, server)| MariaDbSection {
                    name: server_name(index, "mariadb", server.port()),
                    socket: server.socket().to_path_buf(),
                    user: "root",
                    public_address: server.address().to_string(),
                    port: server.port(),
                })
                .collect(),
            metrics: MetricsSection {
                listen: metrics.to_string(),
            },
            sites: SitesSection {
                definitions_dir: host.site_definitions_dir(),
                run_dir: host.sites_run_dir(),
                server_blocks_dir: host.server_blocks_dir(),
                web_server_pid_file: host.web_server_pid_file(),
                fpm_command: host.fpm_command(&spec.stack_version)?,
                cgroup_mount: crate::web::ensure_agent_cgroup_mount()?,
                cgroup_base: host.cgroup_base(),
            },
            testing: (spec.transfer_protocols.is_some() || spec.skip_address_announcements).then(
                || TestingSection {
                    transfer_protocols: spec.transfer_protocols.clone(),
                    skip_address_announcements: spec.skip_address_announcements,
                },
            ),
        };
        let config = host.root.join("etc").join("agent.toml");
        let text = toml::to_string(&file).context("writing the agent config")?;
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

        let command = {
            let (host, binary, config) = (host.clone(), binary.clone(), config.clone());
            move |args: &[&str]| {
                let mut command = host.command(&binary);
                command.arg("--config").arg(&config).args(args);
                command
            }
        };
        run_checked(
            &mut command(&["enrol", "--token", &spec.token]),
            &format!("navette-agent enrol on host {}", host.host),
        )?;
        let restrictions = if spec.under_unit_restrictions {
            unit_restrictions()?
        } else {
            Vec::new()
        };
        let process = {
            let (netns, binary, config) = (host.clone(), binary.clone(), config.clone());
            self.spawn(host, "agent", move || {
                let Some((program, args)) = restrictions.split_first() else {
                    return command(&["run"]);
                };
                let mut wrapped = netns.command(program);
                wrapped
                    .args(args)
                    .arg(&binary)
                    .arg("--config")
                    .arg(&config)
                    .arg("run");
                wrapped
            })?
        };
        let agent = Agent {
            host: host.clone(),
            binary,
            config,
            listen,
            metrics,
            process,
        };
        agent.wait_ready()?;
        Ok(agent)
    }
}

/// `main` for a host's first server of an engine, `<engine><port>` after.
fn server_name(index: usize, engine: &str, port: u16) -> String {
    if index == 0 {
        "main".to_owned()
    } else {
        format!("{engine}{port}")
    }
}

impl Agent {
    pub fn host(&self) -> &Netns {
        &self.host
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Where the agent keeps its state (certificate, key, operations).
    pub fn state_dir(&self) -> PathBuf {
        self.host.root.join("agent")
    }

    /// The agent's own gRPC listener.
    pub fn listen_addr(&self) -> SocketAddrV4 {
        self.listen
    }

    /// Where the agent serves `GET /metrics` (plain HTTP).
    pub fn metrics_addr(&self) -> SocketAddrV4 {
        self.metrics
    }

    /// The agent's metrics now, fetched with a plain HTTP GET from inside
    /// its host's namespace.
    pub fn scrape_metrics(&self) -> anyhow::Result<crate::Scrape> {
        crate::scrape::scrape(&self.host, self.metrics)
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// `navette-agent --config <config> ARGS` inside the host's namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.host.command(&self.binary);
        command.arg("--config").arg(&self.config).args(args);
        command
    }

    /// Kills the agent (SIGKILL), as a crash would.
    pub fn kill9(&self) {
        self.process.kill9();
    }

    /// Graceful stop (SIGTERM), SIGKILL after 10 s.
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGTERM, Duration::from_secs(10));
    }

    /// Kills the agent if it runs and starts `run` again (no new
    /// enrolment); waits until it listens.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.process.restart()?;
        self.wait_ready()
    }

    /// A lazily connecting channel to this agent's `navette.v1.Agent`,
    /// presenting a controller certificate signed by `controller`'s CA
    /// (as the controller's own is: the agent cannot tell them apart).
    /// Call it inside [`Netns::run_in`] of a host that reaches the agent.
    pub fn controller_channel(
        &self,
        controller: &crate::Controller,
    ) -> anyhow::Result<tonic::transport::Channel> {
        use navette_proto::identity::{Role, agent_server_name};
        use navette_proto::tls;
        tls::install_crypto_provider();
        let ca_dir = controller.host().root().join("ca");
        let read = |name: &str| {
            let path = ca_dir.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let (ca_pem, ca_key) = (read("ca.pem")?, read("ca.key")?);
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&ca_key)?)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["controller.navette.internal".into()])?;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(Role::Controller.uri().try_into()?));
        let cert = params.signed_by(&key, &issuer)?;
        let identity = tls::Identity::from_pem(&cert.pem(), &key.serialize_pem(), "controller")?;
        let roots = tls::ca_roots(&ca_pem, "controller CA")?;
        let config = tls::client_config(roots, Some(identity))?;
        Ok(tls::channel(
            std::net::SocketAddr::V4(self.listen),
            &agent_server_name(&self.host.host),
            config,
        )?)
    }

    /// Waits until the agent's listeners (Agent service, metrics) accept
    /// TCP.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        wait_listening(&self.host, &self.process, &[self.listen, self.metrics])
    }
}
