//! `navette-controller`: the daemon and its administration commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use navette_controller::ca::{CertificateAuthority, write_private};
use navette_controller::catalogue::Catalogue;
use navette_controller::config::{Config, LogFormat};
use navette_proto::identity::Role;

/// Navette's controller: the control plane that migrates hosting accounts.
///
/// It serves the panel API (catalogue, accounts) and the operator API (hosts,
/// pools, join tokens) over mutual TLS, and drives the agent on every host.
/// Its state lives in PostgreSQL; several controllers may share one database.
///
/// First start on a new platform:
///
///   navette-controller --config /etc/navette/controller.toml ca init
///   navette-controller --config /etc/navette/controller.toml cert issue --role operator --name alice --out-dir .
///   navette-controller --config /etc/navette/controller.toml run
#[derive(Parser, Debug)]
#[command(
    name = "navette-controller",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    /// Configuration file (TOML). See controller.example.toml for every key
    /// and its default.
    #[arg(
        long,
        short,
        env = "NAVETTE_CONTROLLER_CONFIG",
        default_value = "/etc/navette/controller.toml",
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller daemon until SIGTERM.
    Run,
    /// Manage the certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue certificates for the control panel and operators.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Check the catalogue of migrations and list it.
    Catalogue {
        /// Directory to check instead of the configured one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the CA (ca.pem, ca.key) in the configured ca_dir. Does nothing
    /// if one is already there.
    Init,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IssuableRole {
    /// The control panel (panel API).
    Panel,
    /// An operator (operator and panel APIs).
    Operator,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Issue a certificate and key: <out-dir>/<name>.pem and <name>.key.
    /// Agents do not need this: they enrol with a join token.
    Issue {
        #[arg(long, value_enum)]
        role: IssuableRole,
        /// Who holds it (file names; shown in logs).
        #[arg(long)]
        name: String,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        valid_days: u64,
    },
}

fn init_logging(config: Option<&Config>) {
    use tracing_subscriber::EnvFilter;
    let level = config.map(|c| c.log.level.as_str()).unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.is_some_and(|c| c.log.format == LogFormat::Json) {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    navette_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("navette-controller: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    init_logging(Some(&config));
    match cli.command {
        Command::Run => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(navette_controller::run(config))
        }
        Command::Ca {
            command: CaCommand::Init,
        } => {
            let (_, created) = CertificateAuthority::init(&config.tls.ca_dir)?;
            let dir = config.tls.ca_dir.display();
            if created {
                println!(
                    "created the certificate authority in {dir} (keep ca.key secret; give ca.pem to agents and clients)"
                );
            } else {
                println!("a certificate authority is already in {dir}; left as it is");
            }
            Ok(())
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    role,
                    name,
                    out_dir,
                    valid_days,
                },
        } => {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                anyhow::bail!("--name {name:?}: use letters, digits, '-' and '_'");
            }
            let ca = CertificateAuthority::load(&config.tls.ca_dir)?;
            let role = match role {
                IssuableRole::Panel => Role::Panel,
                IssuableRole::Operator => Role::Operator,
            };
            let (issued, key) = ca.issue_with_new_key(
                &role,
                &format!("navette {} {name}", role.kind()),
                &[],
                Duration::from_secs(valid_days * 86_400),
            )?;
            std::fs::create_dir_all(&out_dir)?;
            let cert_path = out_dir.join(format!("{name}.pem"));
            let key_path = out_dir.join(format!("{name}.key"));
            write_private(&cert_path, issued.certificate_pem.as_bytes(), 0o644)?;
            write_private(&key_path, key.as_bytes(), 0o600)?;
            println!(
                "issued a certificate for {role} {name:?}, valid until {}:\n  {}\n  {}\nCA certificate: {}",
                issued.not_after.to_rfc3339(),
                cert_path.display(),
                key_path.display(),
                config.tls.ca_dir.join("ca.pem").display()
            );
            Ok(())
        }
        Command::Catalogue { dir } => {
            let dir = dir.unwrap_or(config.catalogue.dir);
            let catalogue = Catalogue::load(&dir)?;
            for migration in catalogue.all() {
                println!(
                    "{}\t{}\t({} incompatibilities, {} important)",
                    migration.id,
                    migration.title,
                    migration.incompatibilities.len(),
                    migration
                        .incompatibilities
                        .iter()
                        .filter(|i| i.important)
                        .count()
                );
            }
            Ok(())
        }
    }
}
