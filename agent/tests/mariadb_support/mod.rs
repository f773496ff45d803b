//! What the MariaDB copy tests share: two rig hosts, the source on MariaDB
//! 10.11 and the target on 11.8 (the migration's versions), the
//! account's database (many column types, indexes, foreign keys, views,
//! routines, a trigger, an event, a sequence, an Aria table, three
//! grantees), a throwaway CA, the source agent's real `MariadbSourceService`
//! behind the role gate on a mutual-TLS listener in the source's namespace,
//! and the checks made with tools independent of Navette (`mariadb-dump`,
//! `SHOW CREATE`, a customer's `mariadb` over TCP).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use navette_agent::config::MariadbServer;
use navette_agent::transfer::grants::{Grant, GrantedDatabase, Grants};
use navette_agent::transfer::mariadb::{
    MariadbCopyError, MariadbReport, MariadbSourceService, pull_for_account,
};
use navette_agent::transfer::progress::Progress;
use navette_proto::gate::{self, RoleGateLayer};
use navette_proto::identity::{Role, agent_server_name};
use navette_proto::tls::{self, ClientAuth, Identity, ReloadableServerConfig};
use navette_proto::v1::DatabaseCopy;
use navette_proto::v1::mariadb_source_server::{MariadbSource, MariadbSourceServer, SERVICE_NAME};
use navette_tests::{AccountSpec, MariaDb, MariaDbRelease, MariaDbSpec, Netns, Rig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub const SOURCE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 41);
pub const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 42);
pub const PEER_PORT: u16 = 7461;
pub const SOURCE_HOST: &str = "mdb-src";
pub const TARGET_HOST: &str = "mdb-dst";
pub const TRANSFER: &str = "t-mariadb-1";

pub const ACCOUNT: &str = "mdbalice";
pub const PASSWORD: &str = "alice's pw: ünï \\ 1";
pub const RO_USER: &str = "mdbalice_ro";
pub const RO_PASSWORD: &str = "read-only-pw";
/// Tables whose content nobody writes during the copy.
pub const QUIET_TABLES: [&str; 7] = [
    "audit",
    "big",
    "customers",
    "empty_one",
    "items",
    "legacy_notes",
    "orders",
];
/// The table the customer writes to during the copy.
pub const BUSY_TABLE: &str = "visits";

/// The account's database beyond the rig's `items` table. Its views,
/// routines, trigger and event are the account's (`DEFINER`), as when the
/// customer creates them: a target refuses any other definer.
pub const SCHEMA: &str = r#"
SET NAMES utf8mb4;
USE mdbalice;
CREATE TABLE customers (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(190) NOT NULL,
  balance DECIMAL(12,2) NOT NULL DEFAULT 0,
  ratio DOUBLE,
  score FLOAT,
  big_number BIGINT UNSIGNED,
  tiny TINYINT,
  photo BLOB,
  prefs JSON,
  born DATE,
  seen DATETIME(6),
  updated TIMESTAMP(3) NULL DEFAULT NULL,
  kind ENUM('person','company','état') NOT NULL DEFAULT 'person',
  tags SET('vip','new','late'),
  flags BIT(6),
  legacy VARCHAR(40) CHARACTER SET latin1,
  code BINARY(4),
  nick CHAR(10),
  secret INT INVISIBLE,
  doubled INT AS (id * 2) VIRTUAL,
  year_joined YEAR,
  UNIQUE KEY by_email (email),
  KEY by_name (name)
) ENGINE=InnoDB;
CREATE TABLE orders (
  id INT PRIMARY KEY,
  customer_id INT NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  placed DATETIME NOT NULL,
  note TEXT,
  CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE,
  KEY by_placed (placed)
) ENGINE=InnoDB;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, what VARCHAR(50) NOT NULL) ENGINE=InnoDB;
CREATE TABLE visits (id INT AUTO_INCREMENT PRIMARY KEY, page VARCHAR(200) NOT NULL, at DATETIME(3) NOT NULL) ENGINE=InnoDB;
CREATE TABLE legacy_notes (id INT PRIMARY KEY, body TEXT) ENGINE=Aria;
CREATE TABLE big (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, n DOUBLE) ENGINE=InnoDB;
CREATE TABLE empty_one (id INT PRIMARY KEY) ENGINE=InnoDB;

INSERT INTO customers (name, email, balance, ratio, score, big_number, tiny, photo, prefs, born,
  seen, updated, kind, tags, flags, legacy, code, nick, secret, year_joined) VALUES
 ('Zoë 😀 Ünïcödé', 'zoe@example.org', 1234.56, 0.1e0 + 0.2e0, 3.14159, 18446744073709551615, -128,
  0x00FF10275C0D0A, '{"lang": "fr", "tags": ["a", "b"]}', '1990-02-28', '2024-02-29 12:34:56.123456',
  '2024-03-01 10:00:00.250', 'état', 'vip,late', b'101010', 'café crème', 0x01020304, 'nick', 7, 2024),
 ('O''Brien \\ "quoted"\ttab\nnewline', 'ob@example.org', -0.01, NULL, NULL, 0, 0, X'', '[]', NULL,
  NULL, NULL, 'company', '', b'0', '', 0x00000000, '', NULL, NULL),
 ('nul\0byte', 'nul@example.org', 0, -1e300, -0.5, NULL, NULL, NULL, NULL, '0000-00-00',
  '1970-01-01 00:00:01', '2038-01-19 03:14:07.999', 'person', NULL, NULL, NULL, NULL, NULL, NULL, 1901);
INSERT INTO visits (page, at) VALUES ('/', NOW(3));
INSERT INTO legacy_notes VALUES (1, 'written on MyISAM days'), (2, NULL);
INSERT INTO big SELECT seq, CONCAT('row-', seq), seq / 7 FROM seq_1_to_200000;

CREATE DEFINER = 'mdbalice'@'%' VIEW customer_totals AS
  SELECT c.id, c.name, COUNT(o.id) AS orders, COALESCE(SUM(o.amount), 0) AS total
  FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name;
CREATE DEFINER = 'mdbalice'@'%' SQL SECURITY DEFINER VIEW big_summary AS
  SELECT COUNT(*) AS n, MAX(id) AS last_id FROM big;
CREATE SEQUENCE invoice_numbers START WITH 1000;
SELECT NEXTVAL(invoice_numbers);
DELIMITER ;;
CREATE DEFINER = 'mdbalice'@'%' PROCEDURE place_order(IN p_customer INT, IN p_amount DECIMAL(10,2))
BEGIN
  INSERT INTO orders (id, customer_id, amount, placed)
    SELECT COALESCE(MAX(id), 0) + 1, p_customer, p_amount, '2024-05-01 09:00:00' FROM orders;
END;;
CREATE DEFINER = 'mdbalice'@'%' FUNCTION with_vat(amount DECIMAL(10,2)) RETURNS DECIMAL(10,2) DETERMINISTIC
  RETURN ROUND(amount * 1.2, 2);;
CREATE DEFINER = 'mdbalice'@'%' TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
  INSERT INTO audit (order_id, what) VALUES (NEW.id, 'placed');;
DELIMITER ;
CREATE DEFINER = 'mdbalice'@'%' EVENT purge_audit ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00'
  DO DELETE FROM audit WHERE id < 0;
CALL place_order(1, 9.99);
CALL place_order(1, 20.00);
CALL place_order(2, 5.50);

CREATE USER 'mdbalice_ro'@'%' IDENTIFIED BY 'read-only-pw';
GRANT SELECT (id, name) ON mdbalice.customers TO 'mdbalice_ro'@'%';
GRANT SELECT ON mdbalice.customer_totals TO 'mdbalice_ro'@'%';
GRANT EXECUTE ON PROCEDURE mdbalice.place_order TO 'mdbalice_ro'@'%';
CREATE USER 'mdbbob'@'%' IDENTIFIED BY 'bob-pw';
GRANT SELECT ON mdbalice.* TO 'mdbbob'@'%';
CREATE DATABASE mdbbob_private;
CREATE TABLE mdbbob_private.secrets (id INT PRIMARY KEY, secret VARCHAR(20));
INSERT INTO mdbbob_private.secrets VALUES (1, 'bob only');
"#;

/// A throwaway CA and the identities of the test's parties.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "mariadb copy test CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&key)?.pem();
        Ok(Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The identity of the agent of `host`: its role as a URI SAN, and the
    /// DNS name peers verify it by.
    pub fn agent(&self, host: &str) -> anyhow::Result<Identity> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![agent_server_name(host)])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("navette agent {host}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let role = Role::Agent {
            host_id: host.to_owned(),
        };
        params
            .subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity::from_pem(&cert.pem(), &key.serialize_pem(), host)?)
    }

    pub fn client_config(&self, host: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let roots = tls::ca_roots(&self.ca_pem, "test CA")?;
        Ok(tls::client_config(roots, Some(self.agent(host)?))?)
    }
}

/// The agent configuration's view of a rig server.
pub fn server_config(server: &MariaDb) -> MariadbServer {
    MariadbServer {
        name: "main".to_owned(),
        socket: server.socket().to_owned(),
        user: "root".to_owned(),
        password: None,
        client: "mariadb".into(),
        public_address: None,
        port: server.port(),
    }
}

pub fn copy_of(database: &str) -> DatabaseCopy {
    DatabaseCopy {
        source_server: "main".to_owned(),
        source_database: database.to_owned(),
        target_server: "main".to_owned(),
        target_database: database.to_owned(),
    }
}

/// The source agent's peer listener, running in the source's namespace on
/// a thread of its own until dropped.
pub struct SourceListener {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl SourceListener {
    pub fn start(
        host: &Netns,
        pki: &Pki,
        grants: Arc<Grants>,
        servers: Vec<MariadbServer>,
    ) -> anyhow::Result<SourceListener> {
        Self::serve(
            host,
            pki,
            PEER_PORT,
            MariadbSourceService::new(grants, servers),
        )
    }

    /// Serves `service` as the source host's `MariadbSource` on `port`.
    pub fn serve<S: MariadbSource>(
        host: &Netns,
        pki: &Pki,
        port: u16,
        service: S,
    ) -> anyhow::Result<SourceListener> {
        let roots = tls::ca_roots(&pki.ca_pem, "test CA")?;
        let config = tls::server_config(roots, pki.agent(SOURCE_HOST)?, ClientAuth::Required)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let host = host.clone();
        let thread = std::thread::spawn(move || {
            host.run_in(move || async move {
                let listener = tokio::net::TcpListener::bind((SOURCE_ADDR, port))
                    .await
                    .context("binding the peer listener")?;
                let incoming = tls::incoming(listener, ReloadableServerConfig::new(config), "peer");
                // As the agent's policy: the peer service for agents only;
                // which agent, the grant decides.
                let policy: gate::Policy =
                    Arc::new(
                        |path: &str, role: &Role| match (gate::service_of(path), role) {
                            (SERVICE_NAME, Role::Agent { .. }) => Ok(()),
                            (service, role) => Err(format!("{service} is not served to {role}")),
                        },
                    );
                tonic::transport::Server::builder()
                    .layer(RoleGateLayer::new(policy))
                    .add_service(MariadbSourceServer::new(service))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .context("serving MariadbSource")
            })
        });
        Ok(SourceListener {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for SourceListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("source listener: {error:#}"),
                Err(_) => eprintln!("source listener panicked"),
            }
        }
    }
}

/// Runs `sql` as a customer over TCP from the client namespace: stdout, or
/// an error with the client's complaint.
pub fn customer_sql(
    client: &Netns,
    addr: Ipv4Addr,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<String> {
    let output = client
        .command("mariadb")
        .args(["--no-defaults", "--batch", "--skip-column-names"])
        .arg("--default-character-set=utf8mb4")
        .arg(format!("--host={addr}"))
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .args(["--database", ACCOUNT, "-e", sql])
        .output()
        .context("running mariadb in the client namespace")?;
    if !output.status.success() {
        bail!(
            "{user}@{addr}: {sql}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned())
}

/// `mariadb-dump` of the rows of `tables`, one INSERT per row in primary
/// key order: what must be equal on both sides, checked by a tool that is
/// not Navette's.
pub fn rows_dump(server: &MariaDb, tables: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("mariadb-dump")
        .arg("--no-defaults")
        .arg(format!("--socket={}", server.socket().display()))
        .args(["-u", "root", "--no-create-info", "--skip-triggers"])
        .args(["--skip-extended-insert", "--order-by-primary", "--hex-blob"])
        .args(["--skip-dump-date", "--skip-comments", "--tz-utc"])
        .arg("--default-character-set=utf8mb4")
        .arg(ACCOUNT)
        .args(tables)
        .output()
        .context("running mariadb-dump")?;
    ensure!(
        output.status.success(),
        "mariadb-dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `SHOW CREATE` of every object, the AUTO_INCREMENT of the busy table left
/// out (the writer moves it), in one rendering for both versions
/// ([`one_rendering`]).
pub fn schema_of(server: &MariaDb) -> anyhow::Result<Vec<String>> {
    let mut shown = Vec::new();
    let objects = [
        "TABLE customers",
        "TABLE orders",
        "TABLE audit",
        "TABLE visits",
        "TABLE legacy_notes",
        "TABLE big",
        "TABLE empty_one",
        "TABLE items",
        "VIEW customer_totals",
        "VIEW big_summary",
        "SEQUENCE invoice_numbers",
        "PROCEDURE place_order",
        "FUNCTION with_vat",
        "TRIGGER orders_audit",
        "EVENT purge_audit",
    ];
    for object in objects {
        let (kind, name) = object.split_once(' ').unwrap_or((object, ""));
        let text = server.sql(&format!("SHOW CREATE {kind} {ACCOUNT}.{name}"))?;
        let text = if name == BUSY_TABLE {
            text.split(' ')
                .filter(|word| !word.starts_with("AUTO_INCREMENT="))
                .collect::<Vec<_>>()
                .join(" ")
        } else if kind == "TRIGGER" {
            // The last field is when the trigger was created: now, on the
            // target (no dump carries it).
            text.rsplit_once('\t')
                .map_or(text.clone(), |(definition, _)| definition.to_owned())
        } else {
            text
        };
        shown.push(format!("{object}: {}", one_rendering(&text)));
    }
    Ok(shown)
}

/// `SHOW CREATE TABLE` as 10.11 and 11.8 both print it: 11.8 prints a
/// column's `INVISIBLE` after its default (`DEFAULT NULL INVISIBLE`), 10.11
/// before (`INVISIBLE DEFAULT NULL`); the column is the same. Each column
/// line (`\n` is literal in `--batch` output) gets `INVISIBLE` last.
fn one_rendering(text: &str) -> String {
    text.split("\\n")
        .map(|line| {
            let (body, comma) = match line.strip_suffix(',') {
                Some(body) => (body, ","),
                None => (line, ""),
            };
            if line.trim_start().starts_with('`') && body.contains(" INVISIBLE") {
                format!("{} INVISIBLE{comma}", body.replacen(" INVISIBLE", "", 1))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\\n")
}

/// Two hosts, their MariaDB servers, the account on the source, and the
/// source agent's peer listener, granted to the target host for
/// [`TRANSFER`].
pub struct World {
    /// Declared first: stops before the rig tears the hosts down.
    pub listener: SourceListener,
    pub pki: Pki,
    pub peer: SocketAddr,
    pub source: Netns,
    pub target: Netns,
    pub source_db: MariaDb,
    pub target_db: MariaDb,
    pub rig: Rig,
}

impl World {
    pub fn new(test_name: &str) -> anyhow::Result<World> {
        Self::with_specs(
            test_name,
            MariaDbSpec::default(),
            MariaDbSpec {
                release: MariaDbRelease::V11_8,
                ..MariaDbSpec::default()
            },
        )
    }

    /// [`World::new`] with the servers started from `source_spec` and
    /// `target_spec` (a binary log for replication).
    pub fn with_specs(
        test_name: &str,
        source_spec: MariaDbSpec,
        target_spec: MariaDbSpec,
    ) -> anyhow::Result<World> {
        tls::install_crypto_provider();
        let rig = Rig::new(test_name)?;
        let source = rig.add_namespace(SOURCE_HOST, SOURCE_ADDR)?;
        let target = rig.add_namespace(TARGET_HOST, TARGET_ADDR)?;
        let (source_db, target_db) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let source_db = scope.spawn(|| source.start_mariadb_with(&rig, source_spec));
            let target_db = scope.spawn(|| target.start_mariadb_with(&rig, target_spec));
            let join = |what: &str, joined: std::thread::Result<anyhow::Result<MariaDb>>| {
                joined
                    .map_err(|_| anyhow::anyhow!("starting {what} panicked"))?
                    .with_context(|| format!("starting {what}"))
            };
            Ok((
                join("the source MariaDB", source_db.join())?,
                join("the target MariaDB", target_db.join())?,
            ))
        })?;
        rig.add_account(
            &source,
            AccountSpec {
                name: ACCOUNT.to_owned(),
                password: PASSWORD.to_owned(),
                mariadb_databases: vec![ACCOUNT.to_owned()],
                ..AccountSpec::default()
            },
        )?;
        source_db
            .sql(SCHEMA)
            .context("creating the account's schema")?;

        let pki = Pki::new()?;
        let grants = Arc::new(Grants::open(&rig.dir().join("source-agent"))?);
        grants.insert(Grant {
            transfer_id: TRANSFER.to_owned(),
            account: ACCOUNT.to_owned(),
            target_host_id: TARGET_HOST.to_owned(),
            home: None,
            postgresql: Vec::new(),
            mariadb: vec![GrantedDatabase {
                server: "main".to_owned(),
                database: ACCOUNT.to_owned(),
            }],
            protocol_version: 0,
        })?;
        let listener =
            SourceListener::start(&source, &pki, grants, vec![server_config(&source_db)])?;
        let peer = SocketAddr::from((SOURCE_ADDR, PEER_PORT));
        rig.wait_until(
            "the source's peer listener",
            Duration::from_secs(10),
            || target.tcp_connects(peer, Duration::from_secs(1)),
        )?;
        Ok(World {
            listener,
            pki,
            peer,
            source,
            target,
            source_db,
            target_db,
            rig,
        })
    }

    /// A channel to the source's peer listener, presenting the certificate
    /// of the agent of `caller`. Build it inside a namespace.
    pub fn channel(&self, caller: &str) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tls::channel(
            self.peer,
            &agent_server_name(SOURCE_HOST),
            self.pki.client_config(caller)?,
        )?)
    }

    /// Runs [`pull_for_account`] of `database` (same name on both sides)
    /// for [`ACCOUNT`] as the target host's agent, from inside `host`,
    /// into `servers`.
    pub fn pull_on(
        &self,
        host: &Netns,
        servers: &[MariadbServer],
        database: &str,
        progress: &Progress,
    ) -> anyhow::Result<Result<MariadbReport, MariadbCopyError>> {
        host.run_in(|| async {
            let channel = self.channel(TARGET_HOST)?;
            Ok(pull_for_account(
                channel,
                TRANSFER,
                ACCOUNT,
                &[copy_of(database)],
                servers,
                progress,
            )
            .await)
        })
    }

    /// [`World::pull_on`] the target host, into its server.
    pub fn pull(
        &self,
        database: &str,
        progress: &Progress,
    ) -> anyhow::Result<Result<MariadbReport, MariadbCopyError>> {
        self.pull_on(
            &self.target,
            &[server_config(&self.target_db)],
            database,
            progress,
        )
    }
}

/// The users of the account on `server` (`user@host`, sorted).
pub fn account_users(server: &MariaDb) -> anyhow::Result<Vec<String>> {
    let out = server.sql(&format!(
        "SELECT CONCAT(User, '@', Host) FROM mysql.user \
         WHERE User = '{ACCOUNT}' OR User LIKE '{ACCOUNT}\\_%' ORDER BY 1"
    ))?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Users of copies' loaders left on `server`.
pub fn loaders_left(server: &MariaDb) -> anyhow::Result<Vec<String>> {
    let out = server.sql(
        "SELECT CONCAT(User, '@', Host) FROM mysql.user WHERE User LIKE 'navette\\_load\\_%'",
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The target holds nothing of the account's copy: no user, no database,
/// no grant, no record of a user, no loader.
pub fn nothing_applied(target: &MariaDb) -> anyhow::Result<()> {
    ensure!(
        account_users(target)?.is_empty(),
        "users left on the target: {:?}",
        account_users(target)?
    );
    ensure!(
        target
            .sql(&format!("SHOW DATABASES LIKE '{ACCOUNT}'"))?
            .is_empty(),
        "the account's database is on the target"
    );
    let grants = target.sql(&format!(
        "SELECT (SELECT COUNT(*) FROM mysql.db WHERE User LIKE '{ACCOUNT}%') \
           + (SELECT COUNT(*) FROM mysql.tables_priv WHERE User LIKE '{ACCOUNT}%') \
           + (SELECT COUNT(*) FROM mysql.procs_priv WHERE User LIKE '{ACCOUNT}%')"
    ))?;
    ensure!(
        grants == "0",
        "{grants} grants of the account on the target"
    );
    let ledger = target.sql(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'navette_copy_users'",
    )?;
    if ledger == "1" {
        let recorded = target.sql("SELECT COUNT(*) FROM mysql.navette_copy_users")?;
        ensure!(recorded == "0", "{recorded} users recorded as copied");
    }
    ensure!(
        loaders_left(target)?.is_empty(),
        "loaders left: {:?}",
        loaders_left(target)?
    );
    Ok(())
}
