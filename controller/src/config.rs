//! The controller's configuration file (TOML) and its documented defaults.
//!
//! Every field has a default except the database URL; `controller.example.toml`
//! beside this crate shows them all with comments. Unknown keys are refused,
//! so a typo is an error at start-up rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    pub database: Database,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub hosts: Hosts,
    #[serde(default)]
    pub catalogue: Catalogue,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub reinstall: Reinstall,
    #[serde(default)]
    pub transit: Transit,
    #[serde(default)]
    pub addresses: Addresses,
    #[serde(default)]
    pub migrations: Migrations,
}

/// The transit pool's billing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transit {
    /// How long a transit host is free, counted from its hand-over, in
    /// days; after that each started day is charged at the server's own
    /// price (see `transit::billing`). Recorded with each allocation when
    /// it starts, so a change applies to allocations started after it.
    /// Default 7.
    #[serde(default = "default_transit_free_days")]
    pub free_days: u32,
}

impl Default for Transit {
    fn default() -> Self {
        Transit {
            free_days: default_transit_free_days(),
        }
    }
}

fn default_transit_free_days() -> u32 {
    7
}

/// `[addresses]`: IP rerouting (the `addresses` module).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    /// How a move reaches the new host when the request does not say:
    /// `layer2` (the hosts share a segment; the new host announces the
    /// address) or `routed` (the provider routes it to the new host's main
    /// address). Default `layer2`.
    #[serde(default)]
    pub default_mode: RerouteMode,
    /// `[addresses.provider]`: who routes failover addresses. Default: not
    /// set, and routed moves are refused.
    #[serde(default)]
    pub provider: Option<Provider>,
}

/// How an address reaches the host that holds it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RerouteMode {
    #[default]
    Layer2,
    Routed,
}

impl RerouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RerouteMode::Layer2 => "layer2",
            RerouteMode::Routed => "routed",
        }
    }

    pub fn parse(text: &str) -> Option<RerouteMode> {
        [RerouteMode::Layer2, RerouteMode::Routed]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

/// The provider's failover API (`addresses::provider`, whose doc is the
/// contract).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Required. `http://HOST:PORT[/PREFIX]`: the call is
    /// `POST <url>/failover/<address>` with `active_server_ip=<main
    /// address>` (Hetzner's Robot API shape).
    pub url: String,
    /// Optional: HTTP basic authentication user.
    #[serde(default)]
    pub user: Option<String>,
    /// Optional: a file holding the basic authentication password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Default 120. How long the provider may take to answer (real ones
    /// take 40 to 60 s to switch a route).
    #[serde(default = "default_provider_timeout")]
    pub timeout_secs: u64,
}

fn default_provider_timeout() -> u64 {
    120
}

/// Where the controller listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The mutual-TLS API (panel, operator and agent gateway). Default
    /// `0.0.0.0:7443`.
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// Enrolment only: TLS without client certificates, so that a new agent
    /// can trade its join token for a certificate. Default `0.0.0.0:7444`.
    #[serde(default = "default_enrolment")]
    pub enrolment: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: default_api(),
            enrolment: default_enrolment(),
        }
    }
}

fn default_api() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}

fn default_enrolment() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7444))
}

/// The controller's own PostgreSQL database. Several controllers may share
/// one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// A libpq-style connection string, e.g.
    /// `host=/var/run/postgresql user=navette dbname=navette`. Required.
    pub url: String,
    /// Connections kept in the pool. Default 8.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long start-up waits for the database to accept connections.
    /// Default 60 seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// TLS to the database: `disable`, `prefer` (TLS when the server offers
    /// it), `require` (TLS always, the server's certificate checked against
    /// `ca_file`) or `verify-full` (also its host name). Default `disable`,
    /// right for the default Unix socket; use `verify-full` for a database
    /// reached over a network. An `sslmode` in `url` is refused: set it
    /// here.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA(s) that signed the database server's certificate.
    /// Needed by every `sslmode` but `disable`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// One connection attempt (TCP, TLS and authentication) gives up after
    /// this. Default 10 seconds.
    #[serde(default = "default_connect_attempt_timeout")]
    pub connect_attempt_timeout_secs: u64,
    /// How long a request waits for a free pooled connection before it is
    /// answered "unavailable". Default 10 seconds.
    #[serde(default = "default_pool_wait_timeout")]
    pub pool_wait_timeout_secs: u64,
    /// The server cancels any statement running longer than this (the
    /// session's `statement_timeout`; schema migrations are exempt), so a
    /// stuck database cannot hold a handler, or a workflow step past its
    /// lease, for ever. 0 disables it. Default 30 seconds.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_secs: u64,
}

/// How the controller's database connection uses TLS.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

fn default_pool_size() -> usize {
    8
}

fn default_connect_attempt_timeout() -> u64 {
    10
}

fn default_pool_wait_timeout() -> u64 {
    10
}

fn default_statement_timeout() -> u64 {
    30
}

fn default_connect_timeout() -> u64 {
    60
}

/// The certificate authority and certificate lifetimes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Directory holding `ca.pem` and `ca.key` (made by `ca init`). Default
    /// `/var/lib/navette/ca`.
    #[serde(default = "default_ca_dir")]
    pub ca_dir: PathBuf,
    /// Extra names (DNS names or IP addresses) in the controller's own
    /// certificate, for clients that dial it by address (grpcurl, the panel).
    /// `controller.navette.internal` and `localhost` are always included.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Lifetime of the certificates agents get at enrolment and renewal; they
    /// renew after two thirds of it. Default 86400 (one day).
    #[serde(default = "default_agent_ttl")]
    pub agent_certificate_ttl_secs: u64,
    /// Lifetime of the controller's own serving certificate, which it issues
    /// itself at start-up and renews while running. Default 604800 (a week).
    #[serde(default = "default_controller_ttl")]
    pub controller_certificate_ttl_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            ca_dir: default_ca_dir(),
            server_names: Vec::new(),
            agent_certificate_ttl_secs: default_agent_ttl(),
            controller_certificate_ttl_secs: default_controller_ttl(),
        }
    }
}

fn default_ca_dir() -> PathBuf {
    PathBuf::from("/var/lib/navette/ca")
}

fn default_agent_ttl() -> u64 {
    86_400
}

fn default_controller_ttl() -> u64 {
    7 * 86_400
}

/// How hosts are tracked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    /// A host whose agent sent no heartbeat for this long is marked
    /// unreachable. Default 30 seconds.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_secs: u64,
    /// Validity of a join token when the request gives none. Default 3600.
    #[serde(default = "default_token_ttl")]
    pub join_token_ttl_secs: u64,
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts {
            heartbeat_timeout_secs: default_heartbeat_timeout(),
            join_token_ttl_secs: default_token_ttl(),
        }
    }
}

fn default_heartbeat_timeout() -> u64 {
    30
}

fn default_token_ttl() -> u64 {
    3600
}

/// The catalogue of migrations.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Directory of `*.toml` migration definitions. Default
    /// `/usr/share/navette/catalogue`.
    #[serde(default = "default_catalogue_dir")]
    pub dir: PathBuf,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue {
            dir: default_catalogue_dir(),
        }
    }
}

fn default_catalogue_dir() -> PathBuf {
    PathBuf::from("/usr/share/navette/catalogue")
}

/// Logging.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` for people, `json` for log collectors. Default `text`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter (`info`, `navette_controller=debug`...). `RUST_LOG`
    /// overrides it. Default `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where to serve `GET /metrics` (plain HTTP, Prometheus text format,
    /// no authentication: keep it on loopback or a private network).
    /// Default: not set, no metrics endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// The platform's authoritative DNS, updated with RFC 2136 and TSIG when
/// accounts move (`crate::dns`). Off unless `server` is set: a platform
/// whose DNS is not Navette's to change.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// The primary authoritative server that accepts updates
    /// (`192.0.2.53:53`). Default: not set, DNS updates off.
    #[serde(default)]
    pub server: Option<SocketAddr>,
    /// The TSIG key's name, as the server knows it (`navette.`). Required
    /// with `server`.
    #[serde(default)]
    pub tsig_key_name: Option<String>,
    /// Only `hmac-sha256`. Default `hmac-sha256`.
    #[serde(default = "default_tsig_algorithm")]
    pub tsig_algorithm: String,
    /// A file holding the key's secret as one line of base64, readable by
    /// its owner only (like `ca.key`; a wider mode stops start-up).
    /// Required with `server`.
    #[serde(default)]
    pub tsig_secret_file: Option<PathBuf>,
    /// The zone under which each account's database host name
    /// `<account>.<zone>` lives ('_' becomes '-'), e.g. `db.example.`.
    /// Default: not set, no database host name is updated.
    #[serde(default)]
    pub database_zone: Option<String>,
    /// The TTL an account's records get ahead of a move; the move waits
    /// the records' old TTL after lowering them. Default 60 seconds.
    #[serde(default = "default_lowered_ttl")]
    pub lowered_ttl_secs: u32,
    /// One exchange with the server gives up after this. Default 5
    /// seconds.
    #[serde(default = "default_dns_timeout")]
    pub timeout_secs: u64,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            server: None,
            tsig_key_name: None,
            tsig_algorithm: default_tsig_algorithm(),
            tsig_secret_file: None,
            database_zone: None,
            lowered_ttl_secs: default_lowered_ttl(),
            timeout_secs: default_dns_timeout(),
        }
    }
}

/// *Migrate*'s policy and timings (`[migrations]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migrations {
    /// Refuse a migration unless the account has a test of the same
    /// migration that became ready within `test_max_age_secs` and was not
    /// failed since. Default true: the customer documentation asks for a
    /// test first; an operator may relax it (a platform-wide move).
    #[serde(default = "default_true")]
    pub require_recent_test: bool,
    /// How recent that test must be. Default 14 days.
    #[serde(default = "default_test_max_age")]
    pub test_max_age_secs: u64,
    /// The longest a freeze may last before it is undone (the source
    /// thawed, back to converging). Default 5000 ms: well under clients'
    /// timeouts, so that held requests still succeed.
    #[serde(default = "default_freeze_deadline")]
    pub freeze_deadline_ms: u64,
    /// Freezes tried before the migration rolls back. Default 3.
    #[serde(default = "default_freeze_tries")]
    pub freeze_tries: u32,
    /// The freeze begins only when the PostgreSQL replication lag is at
    /// most this many bytes (over the account's databases). Default 1 MiB.
    #[serde(default = "default_backlog_bytes")]
    pub backlog_threshold_bytes: u64,
    /// ... and the MariaDB backlog at most this many transactions.
    /// Default 100.
    #[serde(default = "default_backlog_transactions")]
    pub backlog_threshold_transactions: u64,
    /// How often the backlog is measured while converging. Default 500 ms.
    #[serde(default = "default_converge_poll")]
    pub converge_poll_ms: u64,
    /// How long the old copy is kept, stopped, after the switch. Default
    /// 7 days.
    #[serde(default = "default_retire_after")]
    pub retire_after_secs: u64,
    /// How long the old host forwards the account's domains to the new
    /// host after the DNS switch when the platform's DNS does not give the
    /// records' TTL (no `[dns]`, or names in the customer's own DNS).
    /// Default 1 day. With `[dns]`, the longest TTL of the switched sets.
    #[serde(default = "default_forward_for")]
    pub forward_for_secs: u64,
}

impl Default for Migrations {
    fn default() -> Self {
        Migrations {
            require_recent_test: true,
            test_max_age_secs: default_test_max_age(),
            freeze_deadline_ms: default_freeze_deadline(),
            freeze_tries: default_freeze_tries(),
            backlog_threshold_bytes: default_backlog_bytes(),
            backlog_threshold_transactions: default_backlog_transactions(),
            converge_poll_ms: default_converge_poll(),
            retire_after_secs: default_retire_after(),
            forward_for_secs: default_forward_for(),
        }
    }
}

/// `[migrations] forward_for_secs`' default: one day.
pub fn default_forward_for() -> u64 {
    86_400
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".to_owned()
}

fn default_lowered_ttl() -> u32 {
    60
}

fn default_dns_timeout() -> u64 {
    5
}

fn default_true() -> bool {
    true
}
fn default_test_max_age() -> u64 {
    14 * 86_400
}
fn default_freeze_deadline() -> u64 {
    5_000
}
fn default_freeze_tries() -> u32 {
    3
}
fn default_backlog_bytes() -> u64 {
    1 << 20
}
fn default_backlog_transactions() -> u64 {
    100
}
fn default_converge_poll() -> u64 {
    500
}
fn default_retire_after() -> u64 {
    7 * 86_400
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|error: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().replace('\n', " "),
        })
    }
}

/// The reinstall hand-off: the provisioner that reinstalls a server, and
/// how long Navette waits for it and for the host to come back (the
/// provisioner's contract is `reinstall::provisioner`'s documentation).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reinstall {
    /// The provisioner: an executable and its arguments, run once per
    /// attempt with the request as JSON on its standard input. Default
    /// none: reinstalls are refused until one is set.
    #[serde(default)]
    pub provisioner: Vec<String>,
    /// A provisioner still running after this long is killed and the
    /// attempt counts as failed. Default 600 seconds.
    #[serde(default = "default_provisioner_timeout")]
    pub provisioner_timeout_secs: u64,
    /// How long the host is waited for, after the provisioner accepted,
    /// to enrol with its token and report the new stack version, unless
    /// the request says otherwise. Default 3600 seconds.
    #[serde(default = "default_enrolment_timeout")]
    pub enrolment_timeout_secs: u64,
}

impl Default for Reinstall {
    fn default() -> Self {
        Reinstall {
            provisioner: Vec::new(),
            provisioner_timeout_secs: default_provisioner_timeout(),
            enrolment_timeout_secs: default_enrolment_timeout(),
        }
    }
}

fn default_provisioner_timeout() -> u64 {
    600
}

fn default_enrolment_timeout() -> u64 {
    3600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_database_url_is_required() -> Result<(), ConfigError> {
        let config = Config::parse("[database]\nurl = \"host=/run/pg\"\n", Path::new("c.toml"))?;
        assert_eq!(config.listen.api, default_api());
        assert_eq!(config.tls.agent_certificate_ttl_secs, 86_400);
        assert_eq!(config.hosts.heartbeat_timeout_secs, 30);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.database.sslmode, SslMode::Disable);
        assert_eq!(config.database.statement_timeout_secs, 30);
        assert_eq!(config.metrics.listen, None);
        assert_eq!(config.dns.server, None, "DNS updates are off by default");
        assert_eq!(config.dns.lowered_ttl_secs, 60);
        assert_eq!(config.addresses.default_mode, RerouteMode::Layer2);
        assert!(config.addresses.provider.is_none());
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = Config::parse(
            "[database]\nurl = \"x\"\n[hosts]\nheartbeat_timeout = 3\n",
            Path::new("c.toml"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("heartbeat_timeout"), "{error}");
        assert!(error.contains("c.toml"), "{error}");
    }

    #[test]
    fn sslmode_takes_libpq_names() -> Result<(), ConfigError> {
        let config = Config::parse(
            "[database]\nurl = \"x\"\nsslmode = \"verify-full\"\nca_file = \"/etc/ssl/db.pem\"\n",
            Path::new("c.toml"),
        )?;
        assert_eq!(config.database.sslmode, SslMode::VerifyFull);
        let error = Config::parse(
            "[database]\nurl = \"x\"\nsslmode = \"verify-ca\"\n",
            Path::new("c.toml"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("verify-full"), "{error}");
        Ok(())
    }

    #[test]
    fn metrics_take_an_address() -> Result<(), ConfigError> {
        let config = Config::parse(
            "[database]\nurl = \"x\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
            Path::new("c.toml"),
        )?;
        assert_eq!(
            config.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        Ok(())
    }

    #[test]
    fn example_file_parses() -> Result<(), ConfigError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("controller.example.toml");
        let config = Config::load(&path)?;
        assert_eq!(config.metrics.listen, None, "metrics are off by default");
        assert_eq!(
            config.transit.free_days, 7,
            "a transit host is free for a week"
        );
        assert_eq!(
            config.migrations,
            Migrations::default(),
            "the example shows the documented defaults of [migrations]"
        );
        Ok(())
    }

    #[test]
    fn an_operator_relaxes_the_test_policy() -> Result<(), ConfigError> {
        let config = Config::parse(
            "[database]\nurl = \"host=/run\"\n[migrations]\nrequire_recent_test = false\nfreeze_deadline_ms = 2000\n",
            Path::new("relaxed.toml"),
        )?;
        assert!(!config.migrations.require_recent_test);
        assert_eq!(config.migrations.freeze_deadline_ms, 2000);
        assert_eq!(
            config.migrations.freeze_tries, 3,
            "the rest keeps its default"
        );
        let default = Config::parse("[database]\nurl = \"host=/run\"\n", Path::new("d.toml"))?;
        assert!(
            default.migrations.require_recent_test,
            "a recent test is required by default"
        );
        Ok(())
    }
}
