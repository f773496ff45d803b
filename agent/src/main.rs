//! `navette-agent`: the command line. Parses arguments, reads the
//! configuration, sets up logging and the runtime, runs `enrol` or `run`, and
//! prints the error chain when they fail.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use navette_agent::config::{Config, LogFormat};
use navette_agent::enrol::{EnrolOutcome, enrol};

const CONFIG_HELP: &str = "\
CONFIGURATION FILE (TOML; unknown keys and bad values are refused at start):
  kind = \"shared\"                  required: shared | dedicated | vps | transit | test
  stack_version = \"2024.1\"         required: software-stack version of this host
  controller = \"192.0.2.2:7443\"    required: controller mutual-TLS API (ip:port)
  enrolment = \"192.0.2.2:7444\"     required: controller enrolment endpoint (ip:port)
  ca_file = \"/etc/navette/ca.pem\"  required: controller CA, trust anchor for `enrol`
  listen = \"192.0.2.11:7445\"       required: where navette.v1.Agent is served
  advertise = \"192.0.2.11:7445\"    default: listen (required if listen is 0.0.0.0/[::])
  state_dir = \"/var/lib/navette-agent\"  default; holds agent.key (0600), agent.pem, ca.pem, host_id
  accounts_dir = \"/home\"           default; each valid-named directory in it is an account
  heartbeat_interval_secs = 5      default; also the longest pause between reconnection attempts
  inventory_interval_secs = 60     default
  home_usage_interval_secs = 900   default; how long a home's measured size is reused
  log_format = \"text\"              default; or \"json\"
  log_level = \"info\"               default; RUST_LOG wins when set

  [[postgresql]]                   zero or more
  name = \"main\"                    required
  host = \"/var/run/postgresql\"     default; socket directory or address the agent connects to
  port = 5432                      default
  user = \"postgres\"                default; a superuser
  password = \"\"                    optional
  public_address = \"192.0.2.11\"    optional; default: host, or this host's first address

  [[mariadb]]                      zero or more
  name = \"main\"                    required
  socket = \"/run/mysqld/mysqld.sock\"  default
  user = \"root\"                    default
  password = \"\"                    optional; given to the client in MYSQL_PWD
  client = \"mariadb\"               default; the client binary
  public_address = \"192.0.2.11\"    optional; default the host's first address
  port = 3306                      default

A commented example ships as agent/agent.example.toml.";

/// Navette's host agent.
///
/// Runs on every shared, dedicated, VPS, transit and test server. Enrol it
/// once with a join token from an operator (`JoinTokens/CreateJoinToken`),
/// then run it as a daemon (systemd `Type=notify`): it reports heartbeats and
/// the host's inventory (accounts, homes, databases, addresses, disk) to the
/// controller over mutual TLS, serves navette.v1.Agent to the controller, and
/// renews its certificate before it expires.
#[derive(Debug, Parser)]
#[command(name = "navette-agent", version, after_long_help = CONFIG_HELP)]
struct Cli {
    /// The agent's configuration file (TOML; its fields are listed by
    /// `navette-agent --help` and commented in agent.example.toml).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "NAVETTE_AGENT_CONFIG",
        default_value = "/etc/navette/agent.toml"
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrol this host with the controller using a one-time join token.
    ///
    /// Makes the agent's private key (it never leaves the host), sends a
    /// certificate request with the token to the controller's enrolment
    /// endpoint (verified with `ca_file`), and stores the key, certificate,
    /// CA and host id in `state_dir`. Prints the host id the agent became.
    /// When already enrolled, says so and does not use the token.
    Enrol {
        /// The join token's secret, as given by `CreateJoinToken`. Prefer the
        /// environment variable to keep it out of the process list.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "NAVETTE_JOIN_TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// Enrol again even though a certificate is present (e.g. after it
        /// expired, or to move the agent to another host id).
        #[arg(long)]
        force: bool,
    },
    /// Run the agent daemon (needs a previous `enrol`).
    ///
    /// Serves navette.v1.Agent, gRPC health and reflection on `listen`
    /// (mutual TLS; the Agent service to the controller only), sends a
    /// heartbeat every `heartbeat_interval_secs`, collects the inventory every
    /// `inventory_interval_secs` and reports it when it changed, renews the
    /// certificate at two thirds of its lifetime, notifies systemd when ready,
    /// and stops cleanly on SIGTERM or SIGINT.
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    navette_proto::tls::install_crypto_provider();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "navette-agent: error: {}",
                navette_agent::error_chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Enrol { token, force } => enrol_command(&config, &token, force).await,
            Command::Run => run_command(config).await,
        }
    });
    // An account walk may still be running on a blocking thread: do not wait
    // for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn enrol_command(config: &Config, token: &str, force: bool) -> anyhow::Result<()> {
    match enrol(config, token, force).await? {
        EnrolOutcome::AlreadyEnrolled { host_id, not_after } => {
            println!(
                "already enrolled as host {host_id} (certificate valid until {}); the token was not used. Use --force to enrol again.",
                not_after.to_rfc3339()
            );
        }
        EnrolOutcome::Enrolled { host_id, not_after } => {
            println!(
                "enrolled as host {host_id} (certificate valid until {}); start the agent with `navette-agent --config {} run`",
                not_after.to_rfc3339(),
                config.path.display()
            );
        }
    }
    Ok(())
}

async fn run_command(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(message = "SIGTERM received"),
            _ = interrupt.recv() => tracing::info!(message = "SIGINT received"),
        }
    };
    let json = config.log_format == LogFormat::Json;
    let result = navette_agent::run(config, stop).await;
    if let (Err(error), true) = (&result, json) {
        tracing::error!(message = "agent failed", error = %navette_agent::error_chain(error));
    }
    Ok(result?)
}

/// Logs to standard error, as text or JSON lines. `RUST_LOG` wins over
/// `log_level`.
fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).unwrap_or_else(|_| EnvFilter::new(&config.log_level))
        }
        _ => EnvFilter::new(&config.log_level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
