//! The agent's configuration file (TOML): what it is, how it is read, and the
//! checks that refuse a bad file at start with the file and the field named.
//!
//! Owns nothing else: no I/O beyond reading the one file. Every field and its
//! default is documented here and in `agent/agent.example.toml`; keep both in
//! step.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use navette_proto::v1::HostKind;
use serde::Deserialize;

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the
    /// wrong type.
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field's value is well-formed but not acceptable.
    #[error("configuration file {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// The agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this configuration was read from (not a TOML key); named in
    /// error messages and in the hints the agent prints.
    #[serde(skip)]
    pub path: PathBuf,
    /// Required. What this host is for: `shared`, `dedicated`, `vps`,
    /// `transit` or `test`.
    pub kind: Kind,
    /// Required. Version of the platform's software stack this host runs,
    /// e.g. `"2024.1"`; migrations choose target hosts by it.
    pub stack_version: String,
    /// Required. The controller's mutual-TLS API address (`ip:port`), to which
    /// heartbeats, inventories and renewals go.
    pub controller: SocketAddr,
    /// Required. The controller's enrolment address (`ip:port`), used once by
    /// `enrol` with a join token, without a client certificate.
    pub enrolment: SocketAddr,
    /// Required. The controller CA certificate (PEM): the trust anchor with
    /// which `enrol` verifies the controller. After enrolment the CA from the
    /// controller's answer, kept in `state_dir/ca.pem`, is used.
    pub ca_file: PathBuf,
    /// Required. Where the agent serves `navette.v1.Agent` (`ip:port`).
    pub listen: SocketAddr,
    /// Optional, default = `listen`. The address the controller should dial to
    /// reach this agent; required when `listen` is a wildcard address.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Default `/var/lib/navette-agent`. Holds `agent.key` (0600),
    /// `agent.pem`, `ca.pem` and `host_id`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Default `/home`. Each directory directly under it is a customer
    /// account named after the directory.
    #[serde(default = "default_accounts_dir")]
    pub accounts_dir: PathBuf,
    /// Default 5. Seconds between two heartbeats to the controller; also the
    /// longest wait between two reconnection attempts.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// Default 60. Seconds between two inventory collections.
    #[serde(default = "default_inventory_interval_secs")]
    pub inventory_interval_secs: u64,
    /// Default 900. Seconds an account home's measured size (every file's
    /// size, counted by walking the home) is reused by later inventories
    /// before the home is walked again: walking every home every minute
    /// would load a shared host's disks. A new account is measured at once.
    #[serde(default = "default_home_usage_interval_secs")]
    pub home_usage_interval_secs: u64,
    /// Default `text`. Log format on standard error: `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Default `info`. A tracing filter (`info`, `debug`,
    /// `navette_agent=debug,info`...); `RUST_LOG`, when set, wins.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Zero or more PostgreSQL servers on this host (`[[postgresql]]`).
    #[serde(default)]
    pub postgresql: Vec<PostgresqlServer>,
    /// Zero or more MariaDB/MySQL servers on this host (`[[mariadb]]`).
    #[serde(default)]
    pub mariadb: Vec<MariadbServer>,
    /// Prometheus metrics (`[metrics]`); off by default.
    #[serde(default)]
    pub metrics: Metrics,
    /// The accounts' sites (`[sites]`): where their definitions are, and
    /// how this host runs them.
    #[serde(default)]
    pub sites: Sites,
    /// IP rerouting (`[addresses]`): where moved addresses go, and how
    /// they are announced.
    #[serde(default)]
    pub addresses: Addresses,
    /// Test-only settings (`[testing]`): never set on a real host.
    #[serde(default)]
    pub testing: Testing,
}

/// `[addresses]`: the addresses the controller moves to and from this host
/// (`addresses::ensure`). On shared layer 2 each is announced after it is
/// added, `announce_count` times `announce_interval_ms` apart, as
/// keepalived repeats its gratuitous ARPs: one lost frame does not leave a
/// router pointing at the old host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    /// Optional, default: the interface that holds the agent's `listen`
    /// address. The interface moved addresses are added to.
    #[serde(default)]
    pub interface: Option<String>,
    /// Default 5 (keepalived's `vrrp_garp_master_repeat`). How many
    /// gratuitous ARPs or unsolicited neighbour advertisements are sent
    /// for an address this host takes; the first goes at once, before the
    /// call returns.
    #[serde(default = "default_announce_count")]
    pub announce_count: u32,
    /// Default 100. Milliseconds between two announcements.
    #[serde(default = "default_announce_interval_ms")]
    pub announce_interval_ms: u64,
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses {
            interface: None,
            announce_count: default_announce_count(),
            announce_interval_ms: default_announce_interval_ms(),
        }
    }
}

fn default_announce_count() -> u32 {
    5
}
fn default_announce_interval_ms() -> u64 {
    100
}

/// Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Optional, default: not set, no metrics endpoint. Where to serve
    /// `GET /metrics` (plain HTTP, Prometheus text format, no
    /// authentication: keep it on loopback or a private network).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[sites]`: the accounts' sites. The hosting panel (or the operator)
/// writes one definition file per account into `definitions_dir`; the
/// agent reports them and runs them on request (`StartSites`): one PHP-FPM
/// master per account, in the account's control group, with a pool
/// running as the account's user, and one server block per site in the
/// host's web server (nginx).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sites {
    /// Default `/etc/navette/sites`. One `<account>.toml` per account with
    /// sites: `[[site]]` tables of `domains` (list of host names),
    /// `document_root` (relative to the home, default `www`) and `runtime`
    /// (`php` or `static`, default `php`). A missing directory means no
    /// account has sites.
    #[serde(default = "default_sites_definitions_dir")]
    pub definitions_dir: PathBuf,
    /// Default `/run/navette-agent/sites`. Per account: the pool's
    /// configuration, pid file, socket, private temporary directory and
    /// the record of the domains it serves. Kept across agent restarts
    /// (the pools keep running), lost at a reboot (as the pools are).
    #[serde(default = "default_sites_run_dir")]
    pub run_dir: PathBuf,
    /// Default `/etc/nginx/navette-sites`. Where the agent writes one
    /// server block per site (`<account>.<n>.conf`); the web server's
    /// configuration must `include` `*.conf` from it inside `http`.
    #[serde(default = "default_sites_server_blocks_dir")]
    pub server_blocks_dir: PathBuf,
    /// Default `/run/nginx.pid`. The web server's pid file: after
    /// changing server blocks the agent sends it SIGHUP (nginx reloads its
    /// configuration without dropping a connection).
    #[serde(default = "default_sites_web_server_pid_file")]
    pub web_server_pid_file: PathBuf,
    /// Optional. A command run instead of the SIGHUP (`["systemctl",
    /// "reload", "nginx"]`); it must exit 0.
    #[serde(default)]
    pub reload_command: Option<Vec<String>>,
    /// Default `www-data`. The web server's worker user: the only user
    /// (with root) that may connect to the pools' sockets.
    #[serde(default = "default_sites_web_server_user")]
    pub web_server_user: String,
    /// Default `["/usr/sbin/php-fpm8.2"]`. The FPM program and any
    /// arguments before the agent's (`--fpm-config <file>`); for PHP from
    /// another tree, a wrapper that enters it with the host's paths
    /// unchanged. It must daemonise (the agent's pool configuration says
    /// so) and exit once the pool listens.
    #[serde(default = "default_sites_fpm_command")]
    pub fpm_command: Vec<String>,
    /// Default `/sys/fs/cgroup`. Where the cgroup hierarchies are mounted
    /// (cgroup v2, or v1 with its `freezer` controller).
    #[serde(default = "default_sites_cgroup_mount")]
    pub cgroup_mount: PathBuf,
    /// Default `navette`. The directory under the hierarchy holding one
    /// group per account (on a systemd host, a slice the unit delegates).
    #[serde(default = "default_sites_cgroup_base")]
    pub cgroup_base: String,
}

impl Default for Sites {
    fn default() -> Self {
        Sites {
            definitions_dir: default_sites_definitions_dir(),
            run_dir: default_sites_run_dir(),
            server_blocks_dir: default_sites_server_blocks_dir(),
            web_server_pid_file: default_sites_web_server_pid_file(),
            reload_command: None,
            web_server_user: default_sites_web_server_user(),
            fpm_command: default_sites_fpm_command(),
            cgroup_mount: default_sites_cgroup_mount(),
            cgroup_base: default_sites_cgroup_base(),
        }
    }
}

fn default_sites_definitions_dir() -> PathBuf {
    PathBuf::from("/etc/navette/sites")
}
fn default_sites_run_dir() -> PathBuf {
    PathBuf::from("/run/navette-agent/sites")
}
fn default_sites_server_blocks_dir() -> PathBuf {
    PathBuf::from("/etc/nginx/navette-sites")
}
fn default_sites_web_server_pid_file() -> PathBuf {
    PathBuf::from("/run/nginx.pid")
}
fn default_sites_web_server_user() -> String {
    "www-data".to_owned()
}
fn default_sites_fpm_command() -> Vec<String> {
    vec!["/usr/sbin/php-fpm8.2".to_owned()]
}
fn default_sites_cgroup_mount() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_sites_cgroup_base() -> String {
    "navette".to_owned()
}

/// `[testing]`: settings that make an agent behave like another build, for
/// the end-to-end tests only. A real host leaves the section out.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Testing {
    /// Test only. The transfer protocol versions this agent speaks and
    /// reports, as a source and as a target (e.g. `[1]`: an agent from
    /// before protocol 2); each must be one this build speaks. Default:
    /// every version this build speaks
    /// ([`SPOKEN`](crate::transfer::protocol::SPOKEN)).
    #[serde(default)]
    pub transfer_protocols: Option<Vec<u32>>,
    /// Test only. Default false. True: addresses this host takes are not
    /// announced at all, to show what the announcement is for (a router
    /// keeps sending to the old host until its neighbour entry expires).
    #[serde(default)]
    pub skip_address_announcements: bool,
}

/// The kinds of host, as written in the file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Shared,
    Dedicated,
    Vps,
    Transit,
    Test,
}

impl Kind {
    /// The protobuf value reported in the inventory.
    pub fn host_kind(self) -> HostKind {
        match self {
            Kind::Shared => HostKind::Shared,
            Kind::Dedicated => HostKind::Dedicated,
            Kind::Vps => HostKind::Vps,
            Kind::Transit => HostKind::Transit,
            Kind::Test => HostKind::Test,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A PostgreSQL server the agent inventories (and, later, copies from/to).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresqlServer {
    /// Required. Name of the server on this host, e.g. `"main"`; databases
    /// are reported as belonging to it.
    pub name: String,
    /// Default `/var/run/postgresql`. A socket directory (starts with `/`) or
    /// a host name or address, used by the agent to connect.
    #[serde(default = "default_postgresql_host")]
    pub host: String,
    /// Default 5432. Port the agent connects to (also the socket's port
    /// number) and that customers use.
    #[serde(default = "default_postgresql_port")]
    pub port: u16,
    /// Default `postgres`. A superuser role.
    #[serde(default = "default_postgresql_user")]
    pub user: String,
    /// Optional. Password of `user` (not needed with peer/trust auth).
    #[serde(default)]
    pub password: Option<String>,
    /// Optional. The address customers connect to, reported in the inventory.
    /// Default: `host` when it is not a socket directory, else the host's
    /// first non-loopback address.
    #[serde(default)]
    pub public_address: Option<String>,
    /// Optional. Directory of this server's client programs (`pg_dump`,
    /// `pg_restore`), used to copy databases. Default: where the
    /// distribution installs this major version
    /// (`/usr/lib/postgresql/<major>/bin`), else `PATH`.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Optional. `LD_LIBRARY_PATH` for those programs, when they are not
    /// installed system-wide.
    #[serde(default)]
    pub library_path: Option<String>,
}

/// A MariaDB or MySQL server the agent inventories through its command-line
/// client.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MariadbServer {
    /// Required. Name of the server on this host, e.g. `"main"`.
    pub name: String,
    /// Default `/run/mysqld/mysqld.sock`. The server's Unix socket.
    #[serde(default = "default_mariadb_socket")]
    pub socket: PathBuf,
    /// Default `root`. A user allowed to read every schema.
    #[serde(default = "default_mariadb_user")]
    pub user: String,
    /// Optional. Password of `user`; passed to the client in `MYSQL_PWD`,
    /// never on the command line.
    #[serde(default)]
    pub password: Option<String>,
    /// Default `mariadb`. The client binary (a name looked up in `PATH`, or a
    /// path), e.g. `mysql` on MySQL hosts.
    #[serde(default = "default_mariadb_client")]
    pub client: PathBuf,
    /// Optional. The address customers connect to, reported in the inventory.
    /// Default: the host's first non-loopback address.
    #[serde(default)]
    pub public_address: Option<String>,
    /// Default 3306. The TCP port customers connect to.
    #[serde(default = "default_mariadb_port")]
    pub port: u16,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/navette-agent")
}
fn default_accounts_dir() -> PathBuf {
    PathBuf::from("/home")
}
fn default_heartbeat_interval_secs() -> u64 {
    5
}
fn default_inventory_interval_secs() -> u64 {
    60
}
fn default_home_usage_interval_secs() -> u64 {
    900
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_postgresql_host() -> String {
    "/var/run/postgresql".to_owned()
}
fn default_postgresql_port() -> u16 {
    5432
}
fn default_postgresql_user() -> String {
    "postgres".to_owned()
}
fn default_mariadb_socket() -> PathBuf {
    PathBuf::from("/run/mysqld/mysqld.sock")
}
fn default_mariadb_user() -> String {
    "root".to_owned()
}
fn default_mariadb_client() -> PathBuf {
    PathBuf::from("mariadb")
}
fn default_mariadb_port() -> u16 {
    3306
}

impl Config {
    /// Reads and checks the configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &error),
        })?;
        config.path = path.to_owned();
        config.check()?;
        Ok(config)
    }

    /// Where the controller reaches this agent.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// The transfer protocol versions this agent speaks (ascending):
    /// `[testing] transfer_protocols`, else every one this build speaks.
    pub fn transfer_protocols(&self) -> Vec<u32> {
        let mut versions = match &self.testing.transfer_protocols {
            Some(versions) => versions.clone(),
            None => crate::transfer::protocol::SPOKEN.to_vec(),
        };
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.stack_version.trim().is_empty() {
            return Err(self.invalid("stack_version", "must not be empty"));
        }
        if self.heartbeat_interval_secs == 0 {
            return Err(self.invalid("heartbeat_interval_secs", "must be at least 1"));
        }
        if self.inventory_interval_secs == 0 {
            return Err(self.invalid("inventory_interval_secs", "must be at least 1"));
        }
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return Err(self.invalid(
                "advertise",
                format!(
                    "required when `listen` ({}) is a wildcard address: the controller needs an address it can dial",
                    self.listen
                ),
            ));
        }
        match self.advertise {
            Some(advertise) if advertise.ip().is_unspecified() || advertise.port() == 0 => {
                return Err(self.invalid(
                    "advertise",
                    format!("{advertise} cannot be dialled: give a concrete address and port"),
                ));
            }
            _ => {}
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(self.invalid("log_level", error.to_string()));
        }
        let mut names = BTreeSet::new();
        for (index, server) in self.postgresql.iter().enumerate() {
            let field = format!("postgresql[{index}]");
            if server.name.trim().is_empty() {
                return Err(self.invalid(format!("{field}.name"), "must not be empty"));
            }
            if !names.insert(server.name.as_str()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("PostgreSQL server name {:?} is used twice", server.name),
                ));
            }
            if server.host.trim().is_empty() {
                return Err(self.invalid(format!("{field}.host"), "must not be empty"));
            }
        }
        if let Some(versions) = &self.testing.transfer_protocols {
            let spoken = crate::transfer::protocol::SPOKEN;
            if versions.is_empty() {
                return Err(self.invalid(
                    "testing.transfer_protocols",
                    "must name at least one version (or leave the key out)",
                ));
            }
            if let Some(unknown) = versions.iter().find(|v| !spoken.contains(v)) {
                return Err(self.invalid(
                    "testing.transfer_protocols",
                    format!(
                        "this agent does not speak transfer protocol version {unknown}; it speaks {}",
                        crate::transfer::protocol::list(spoken)
                    ),
                ));
            }
        }
        if self.sites.fpm_command.is_empty() || self.sites.fpm_command[0].trim().is_empty() {
            return Err(self.invalid("sites.fpm_command", "must name a program"));
        }
        if matches!(&self.sites.reload_command, Some(command) if command.is_empty()) {
            return Err(self.invalid(
                "sites.reload_command",
                "must name a program (or leave the key out to send SIGHUP)",
            ));
        }
        let base = &self.sites.cgroup_base;
        if base.is_empty()
            || base == "."
            || base == ".."
            || base.contains('/')
            || base.contains(char::is_whitespace)
        {
            return Err(self.invalid(
                "sites.cgroup_base",
                "must be one directory name (no '/', not '.' or '..')",
            ));
        }
        let mut names = BTreeSet::new();
        for (index, server) in self.mariadb.iter().enumerate() {
            let field = format!("mariadb[{index}]");
            if server.name.trim().is_empty() {
                return Err(self.invalid(format!("{field}.name"), "must not be empty"));
            }
            if !names.insert(server.name.as_str()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("MariaDB server name {:?} is used twice", server.name),
                ));
            }
        }
        Ok(())
    }
}

impl PostgresqlServer {
    /// Whether `host` is a Unix socket directory rather than a network host.
    pub fn uses_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// How the agent connects to `database` on this server, as the
    /// configured (super)user; `application` names the session in
    /// `pg_stat_activity`.
    pub fn connection_config(
        &self,
        database: &str,
        application: &str,
        timeout: std::time::Duration,
    ) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        if self.uses_socket() {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name(application)
            .connect_timeout(timeout);
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
            config.password(password);
        }
        config
    }
}

/// A one-line description of a TOML error: the line number and its text,
/// which names the offending key, then serde's message.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let end = span.end.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |at| start + at);
    if end > line_end {
        // The span covers a whole table (e.g. a missing field): the message
        // names the field, a line would mislead.
        return message.to_owned();
    }
    let line_number = text[..start].matches('\n').count() + 1;
    let line = text[line_start..line_end].trim();
    format!("line {line_number} (`{line}`): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
kind = "shared"
stack_version = "2024.1"
controller = "192.0.2.2:7443"
enrolment = "192.0.2.2:7444"
ca_file = "/etc/navette/ca.pem"
listen = "192.0.2.11:7445"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/navette/agent.toml"))
    }

    #[test]
    fn defaults_fill_the_optional_fields() {
        let config = parse(MINIMAL).expect("minimal configuration");
        assert_eq!(config.kind, Kind::Shared);
        assert_eq!(config.advertise(), config.listen);
        assert_eq!(config.state_dir, Path::new("/var/lib/navette-agent"));
        assert_eq!(config.accounts_dir, Path::new("/home"));
        assert_eq!(config.heartbeat_interval_secs, 5);
        assert_eq!(config.inventory_interval_secs, 60);
        assert_eq!(config.home_usage_interval_secs, 900);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_level, "info");
        assert!(config.postgresql.is_empty() && config.mariadb.is_empty());
        assert_eq!(config.metrics.listen, None);
        assert_eq!(
            config.sites.definitions_dir,
            Path::new("/etc/navette/sites")
        );
        assert_eq!(config.sites.fpm_command, ["/usr/sbin/php-fpm8.2"]);
        assert_eq!(config.sites.cgroup_base, "navette");
        assert_eq!(config.path, Path::new("/etc/navette/agent.toml"));
    }

    #[test]
    fn an_older_protocol_set_is_a_test_setting_of_known_versions() {
        let every = parse(MINIMAL).expect("minimal configuration");
        assert_eq!(
            every.transfer_protocols(),
            crate::transfer::protocol::SPOKEN
        );
        let old = parse(&format!("{MINIMAL}\n[testing]\ntransfer_protocols = [1]\n"))
            .expect("an older protocol set");
        assert_eq!(old.transfer_protocols(), [1]);
        let unknown = parse(&format!("{MINIMAL}\n[testing]\ntransfer_protocols = [9]\n"))
            .expect_err("version 9 does not exist");
        assert!(
            unknown.to_string().contains("testing.transfer_protocols")
                && unknown.to_string().contains("version 9"),
            "{unknown}"
        );
        let none = parse(&format!("{MINIMAL}\n[testing]\ntransfer_protocols = []\n"))
            .expect_err("an empty set speaks to nobody");
        assert!(none.to_string().contains("at least one"), "{none}");
    }

    #[test]
    fn database_servers_get_their_defaults() {
        let text = format!(
            "{MINIMAL}\n[[postgresql]]\nname = \"main\"\n\n[[mariadb]]\nname = \"main\"\npassword = \"x\"\n"
        );
        let config = parse(&text).expect("configuration with servers");
        let postgresql = &config.postgresql[0];
        assert_eq!(postgresql.host, "/var/run/postgresql");
        assert!(postgresql.uses_socket());
        assert_eq!(
            (postgresql.port, postgresql.user.as_str()),
            (5432, "postgres")
        );
        let mariadb = &config.mariadb[0];
        assert_eq!(mariadb.socket, Path::new("/run/mysqld/mysqld.sock"));
        assert_eq!(mariadb.client, Path::new("mariadb"));
        assert_eq!((mariadb.port, mariadb.user.as_str()), (3306, "root"));
        assert_eq!(mariadb.password.as_deref(), Some("x"));
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../agent.example.toml");
        let config = parse(text).expect("agent.example.toml");
        assert_eq!(config.postgresql.len(), 1);
        assert_eq!(config.mariadb.len(), 1);
        assert_eq!(config.metrics.listen, None, "metrics are off by default");
    }

    #[test]
    fn metrics_take_an_address() {
        let config = parse(&format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9465\"\n"
        ))
        .expect("configuration with metrics");
        assert_eq!(
            config.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
        );
        let error = parse(&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"))
            .expect_err("bad address")
            .to_string();
        assert!(error.contains("listen"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let error = parse(&format!("{MINIMAL}heartbeat_secs = 3\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("heartbeat_secs"), "{error}");
        assert!(error.contains("/etc/navette/agent.toml"), "{error}");
    }

    #[test]
    fn an_unknown_key_in_a_server_table_is_refused() {
        let error = parse(&format!(
            "{MINIMAL}[[postgresql]]\nname = \"main\"\ndbname = \"x\"\n"
        ))
        .expect_err("unknown key")
        .to_string();
        assert!(error.contains("dbname"), "{error}");
    }

    #[test]
    fn a_bad_kind_is_refused_naming_the_field() {
        let error = parse(&MINIMAL.replace("\"shared\"", "\"mainframe\""))
            .expect_err("bad kind")
            .to_string();
        assert!(error.contains("kind"), "{error}");
        assert!(error.contains("mainframe"), "{error}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let error = parse(&MINIMAL.replace("stack_version = \"2024.1\"", ""))
            .expect_err("missing field")
            .to_string();
        assert!(error.contains("stack_version"), "{error}");
    }

    #[test]
    fn a_bad_address_is_refused_naming_the_field() {
        let error = parse(&MINIMAL.replace("192.0.2.2:7443", "controller.example"))
            .expect_err("bad address")
            .to_string();
        assert!(error.contains("controller ="), "{error}");
    }

    #[test]
    fn a_wildcard_listen_needs_advertise() {
        let error = parse(&MINIMAL.replace("192.0.2.11:7445", "0.0.0.0:7445"))
            .expect_err("wildcard listen")
            .to_string();
        assert!(error.contains("`advertise`"), "{error}");
        let config = parse(&format!(
            "{}advertise = \"192.0.2.11:7445\"\n",
            MINIMAL.replace("192.0.2.11:7445", "0.0.0.0:7445")
        ))
        .expect("advertise given");
        assert_eq!(config.advertise().to_string(), "192.0.2.11:7445");
    }

    #[test]
    fn sites_settings_are_checked() {
        let config = parse(&format!(
            "{MINIMAL}[sites]\nfpm_command = [\"/usr/local/bin/php84-fpm\", \"--php-ini\", \"/etc/php.ini\"]\nreload_command = [\"systemctl\", \"reload\", \"nginx\"]\n"
        ))
        .expect("sites settings");
        assert_eq!(config.sites.fpm_command.len(), 3);
        assert_eq!(config.sites.run_dir, Path::new("/run/navette-agent/sites"));
        for (text, field) in [
            ("fpm_command = []", "sites.fpm_command"),
            ("reload_command = []", "sites.reload_command"),
            ("cgroup_base = \"../escape\"", "sites.cgroup_base"),
            ("cgroup_base = \"..\"", "sites.cgroup_base"),
        ] {
            let error = parse(&format!("{MINIMAL}[sites]\n{text}\n"))
                .expect_err(text)
                .to_string();
            assert!(error.contains(field), "{text}: {error}");
        }
    }

    #[test]
    fn zero_intervals_and_duplicate_servers_are_refused() {
        let error = parse(&format!("{MINIMAL}heartbeat_interval_secs = 0\n"))
            .expect_err("zero interval")
            .to_string();
        assert!(error.contains("heartbeat_interval_secs"), "{error}");
        let error = parse(&format!(
            "{MINIMAL}[[mariadb]]\nname = \"main\"\n[[mariadb]]\nname = \"main\"\n"
        ))
        .expect_err("duplicate")
        .to_string();
        assert!(error.contains("mariadb[1].name"), "{error}");
    }
}
