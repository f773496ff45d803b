//! A compromised old host: its agent, with a valid certificate and a
//! granted transfer, answers `MariadbSource` with whatever it likes. This
//! source is the adversary, so it is written here (a real Navette source
//! never sends this); the target is the real pull into a real MariaDB
//! server. Each attempt is refused and leaves nothing on the target:
//!
//! - a user definition that carries a second user (`..., 'root'@'localhost'
//!   IDENTIFIED BY ...`): refused before anything is created; root's
//!   definition is unchanged;
//! - a description listing `root` as one of the account's users: refused;
//! - a DEFINER=root procedure hidden behind a `NO_BACKSLASH_ESCAPES` string
//!   trick: refused, the procedure never exists;
//! - `LOAD DATA LOCAL INFILE` of a file of the target host: the load
//!   fails, and the file's content is nowhere in the server;
//! - writing into another customer's database, and granting the account
//!   every privilege on `*.*`: the loader is denied both; the other
//!   customer's table is unchanged;
//!
//! and what the target does accept, it builds from the fields it parsed:
//! `SHOW CREATE USER` on the target prints exactly what the source
//! described (authentication choices, TLS, limits, lock, expiry, or no
//! password), when the users are created and when they are updated.

mod mariadb_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use mariadb_support::{
    ACCOUNT, SOURCE_ADDR, SOURCE_HOST, SourceListener, TARGET_HOST, TRANSFER, World, copy_of,
    nothing_applied, server_config,
};
use navette_agent::transfer::mariadb::{MariadbCopyError, MariadbReport, pull_for_account};
use navette_agent::transfer::progress::Progress;
use navette_proto::identity::agent_server_name;
use navette_proto::tls;
use navette_proto::v1::mariadb_source_server::MariadbSource;
use navette_proto::v1::{
    MariadbChecksumRequest, MariadbChecksums, MariadbDatabaseDescription, MariadbDatabaseRequest,
    MariadbDumpChunk, MariadbGrant, MariadbGrantLevel, MariadbUser,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Where the hostile source listens, beside the real one.
const HOSTILE_PORT: u16 = 7462;

/// What the hostile source answers.
#[derive(Clone, Default)]
struct Answers {
    description: MariadbDatabaseDescription,
    dump: Vec<u8>,
}

#[derive(Clone, Default)]
struct HostileSource {
    answers: Arc<Mutex<Answers>>,
}

impl HostileSource {
    fn answers(&self) -> Answers {
        self.answers
            .lock()
            .map(|answers| answers.clone())
            .unwrap_or_default()
    }

    fn set(&self, answers: Answers) {
        if let Ok(mut current) = self.answers.lock() {
            *current = answers;
        }
    }
}

#[tonic::async_trait]
impl MariadbSource for HostileSource {
    async fn describe_database(
        &self,
        _request: Request<MariadbDatabaseRequest>,
    ) -> Result<Response<MariadbDatabaseDescription>, Status> {
        Ok(Response::new(self.answers().description))
    }

    type DumpStream = ReceiverStream<Result<MariadbDumpChunk, Status>>;

    async fn dump(
        &self,
        _request: Request<MariadbDatabaseRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let sql = self.answers().dump;
        tokio::spawn(async move {
            let _ = sender
                .send(Ok(MariadbDumpChunk {
                    sql,
                    ..MariadbDumpChunk::default()
                }))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn checksum(
        &self,
        _request: Request<MariadbChecksumRequest>,
    ) -> Result<Response<MariadbChecksums>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

/// The account's user as a source describes it, with ALL on its database.
fn alice(create_user: &str) -> MariadbUser {
    MariadbUser {
        user: ACCOUNT.to_owned(),
        host: "%".to_owned(),
        create_user: create_user.to_owned(),
        grants: vec![MariadbGrant {
            privileges: "ALL PRIVILEGES".to_owned(),
            level: MariadbGrantLevel::Database.into(),
            object: String::new(),
            with_grant_option: false,
            database: ACCOUNT.to_owned(),
        }],
    }
}

const ALICE: &str =
    "CREATE USER `mdbalice`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'";

fn description(users: Vec<MariadbUser>) -> MariadbDatabaseDescription {
    MariadbDatabaseDescription {
        server_version: "10.11.6-MariaDB".to_owned(),
        instance_id: "not the target".to_owned(),
        character_set: "utf8mb4".to_owned(),
        collation: "utf8mb4_general_ci".to_owned(),
        users,
        ..MariadbDatabaseDescription::default()
    }
}

fn pull(
    world: &World,
    peer: SocketAddr,
) -> anyhow::Result<Result<MariadbReport, MariadbCopyError>> {
    world.target.run_in(|| async {
        let channel = tls::channel(
            peer,
            &agent_server_name(SOURCE_HOST),
            world.pki.client_config(TARGET_HOST)?,
        )?;
        Ok(pull_for_account(
            channel,
            TRANSFER,
            ACCOUNT,
            &[copy_of(ACCOUNT)],
            &[server_config(&world.target_db)],
            &Progress::new(TRANSFER),
        )
        .await)
    })
}

#[test]
fn what_a_compromised_source_sends_gains_it_nothing_on_the_target() -> anyhow::Result<()> {
    let world = World::new("mariadb_hostile")?;
    let target_db = &world.target_db;
    let hostile = HostileSource::default();
    let _listener =
        SourceListener::serve(&world.source, &world.pki, HOSTILE_PORT, hostile.clone())?;
    let peer = SocketAddr::from((SOURCE_ADDR, HOSTILE_PORT));
    world.rig.wait_until(
        "the hostile source's listener",
        Duration::from_secs(10),
        || world.target.tcp_connects(peer, Duration::from_secs(1)),
    )?;
    target_db.sql(
        "CREATE DATABASE mdbbob_private;\n\
         CREATE TABLE mdbbob_private.ledger (id INT PRIMARY KEY, note VARCHAR(40));\n\
         INSERT INTO mdbbob_private.ledger VALUES (1, 'bob''s secret');",
    )?;
    let root =
        || target_db.sql("SHOW CREATE USER 'root'@'localhost'; SHOW GRANTS FOR 'root'@'localhost'");
    let root_before = root()?;
    let bob = || target_db.sql("SELECT * FROM mdbbob_private.ledger ORDER BY id");
    let bob_before = bob()?;

    // A second user inside the definition of the account's user.
    hostile.set(Answers {
        description: description(vec![alice(&format!(
            "{ALICE}, `root`@`localhost` IDENTIFIED BY 'pwned'"
        ))]),
        dump: b"SELECT 1;\n".to_vec(),
    });
    let outcome = pull(&world, peer)?;
    ensure!(
        matches!(&outcome, Err(MariadbCopyError::Refused { findings, .. })
            if findings.iter().any(|f| f.starts_with("user mdbalice@%: unexpected"))),
        "a definition with a second user: {outcome:?}"
    );
    ensure!(root()? == root_before, "root's definition changed");
    nothing_applied(target_db)?;

    // root described as one of the account's users.
    let mut root_user = alice(
        "CREATE USER `root`@`localhost` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'",
    );
    root_user.user = "root".to_owned();
    root_user.host = "localhost".to_owned();
    hostile.set(Answers {
        description: description(vec![alice(ALICE), root_user]),
        dump: b"SELECT 1;\n".to_vec(),
    });
    let outcome = pull(&world, peer)?;
    ensure!(
        matches!(&outcome, Err(MariadbCopyError::Refused { findings, .. })
            if findings == &["user root@localhost is not one of account mdbalice's users"]),
        "root as the account's user: {outcome:?}"
    );
    ensure!(root()? == root_before, "root's definition changed");
    nothing_applied(target_db)?;

    // A DEFINER=root procedure inside what a lexer that missed the
    // sql_mode change would take for a string.
    let hidden = "SET sql_mode = 'NO_BACKSLASH_ESCAPES';\n\
                  SET STATEMENT max_statement_time = 'a\\' FOR CREATE DEFINER=root@localhost \
                  PROCEDURE promote() SQL SECURITY DEFINER GRANT ALL ON *.* TO 'mdbalice'@'%' -- ';\n";
    hostile.set(Answers {
        description: description(vec![alice(ALICE)]),
        dump: hidden.as_bytes().to_vec(),
    });
    let outcome = pull(&world, peer)?;
    ensure!(
        matches!(&outcome, Err(MariadbCopyError::Refused { findings, .. })
            if findings.iter().any(|f| f.starts_with("DEFINER root@localhost"))),
        "a hidden DEFINER=root: {outcome:?}"
    );
    let procedures = target_db.sql("SELECT COUNT(*) FROM mysql.proc WHERE name = 'promote'")?;
    ensure!(procedures == "0", "the procedure exists on the target");
    nothing_applied(target_db)?;

    // A file of the target host, read by its own client.
    let marker = world.rig.dir().join("target-host-secret");
    std::fs::write(&marker, "the target host's secret\n")?;
    hostile.set(Answers {
        description: description(vec![alice(ALICE)]),
        dump: format!(
            "CREATE TABLE stolen (line TEXT);\n\
             LOAD DATA LOCAL INFILE '{}' INTO TABLE stolen;\n",
            marker.display()
        )
        .into_bytes(),
    });
    let outcome = pull(&world, peer)?;
    eprintln!("LOAD DATA LOCAL: {outcome:?}");
    ensure!(
        matches!(&outcome, Err(MariadbCopyError::Load { .. })),
        "LOAD DATA LOCAL INFILE: {outcome:?}"
    );
    nothing_applied(target_db)?;

    // Writing into another customer's database; granting itself *.*.
    for attack in [
        "INSERT INTO mdbbob_private.ledger VALUES (2, 'written by alice');\n",
        "GRANT ALL PRIVILEGES ON *.* TO 'mdbalice'@'%' WITH GRANT OPTION;\n",
        "UPDATE mysql.global_priv SET Priv = '{}' WHERE User = 'root';\n",
    ] {
        hostile.set(Answers {
            description: description(vec![alice(ALICE)]),
            dump: attack.as_bytes().to_vec(),
        });
        let outcome = pull(&world, peer)?;
        let message = outcome.as_ref().err().map(ToString::to_string);
        eprintln!("{}: {message:?}", attack.trim());
        ensure!(
            matches!(&outcome, Err(MariadbCopyError::Load { .. }))
                && message.as_deref().is_some_and(|m| {
                    m.contains("denied to user 'navette_load_")
                        || m.contains("Access denied for user 'navette_load_")
                }),
            "{attack}: {message:?}"
        );
        nothing_applied(target_db)?;
    }
    ensure!(bob()? == bob_before, "the other customer's table changed");
    ensure!(root()? == root_before, "root's definition changed");

    // What the target accepts it builds from the fields it parsed: the
    // server shows the same definitions as the source described, when the
    // users are created and when they are brought up to date.
    let definitions = [
        (ACCOUNT, "%", ALICE.to_owned()),
        (
            "mdbalice_x",
            "localhost",
            "CREATE USER `mdbalice_x`@`localhost` IDENTIFIED VIA mysql_native_password \
             USING '*D821809F681A40A6E379B50D0463EFAE20BDD122' OR unix_socket REQUIRE SSL \
             WITH MAX_USER_CONNECTIONS 3 MAX_STATEMENT_TIME 2.500000 \
             ACCOUNT LOCK PASSWORD EXPIRE INTERVAL 30 DAY"
                .to_owned(),
        ),
        (
            "mdbalice_open",
            "%",
            "CREATE USER `mdbalice_open`@`%`".to_owned(),
        ),
    ];
    let users = definitions
        .iter()
        .map(|(user, host, create_user)| MariadbUser {
            user: (*user).to_owned(),
            host: (*host).to_owned(),
            ..alice(create_user)
        })
        .collect();
    hostile.set(Answers {
        description: description(users),
        dump: b"CREATE TABLE IF NOT EXISTS nothing (id INT);\nDROP TABLE nothing;\n".to_vec(),
    });
    for round in ["created", "updated"] {
        let report = pull(&world, peer)??;
        ensure!(report.databases.len() == 1, "{round}: {report:?}");
        for (user, host, create_user) in &definitions {
            let shown = target_db.sql(&format!("SHOW CREATE USER '{user}'@'{host}'"))?;
            ensure!(
                &shown == create_user,
                "{round}: {user}@{host} is {shown:?}, the source said {create_user:?}"
            );
        }
    }
    Ok(())
}
