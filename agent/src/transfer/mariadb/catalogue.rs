//! What a database holds, read on the source: its tables and their columns,
//! its other objects, the account's users with privileges on it, and the
//! tables' checksums as they are now. Reads only.

use navette_proto::v1::{
    MariadbColumn, MariadbDatabaseDescription, MariadbTable, MariadbTableChecksum, MariadbUser,
};

use super::client::{self, ClientError, SHORT, account, literal};
use super::privileges::grants_of;
use super::rows::{checksum_sql, encoding_for, parse_checksum};
use crate::config::MariadbServer;

/// Why the source could not read what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("database {database} does not exist on MariaDB server {server}")]
    NoDatabase { server: String, database: String },
    #[error("{table} is not a table of database {database} on MariaDB server {server}")]
    NoTable {
        server: String,
        database: String,
        table: String,
    },
}

/// A base table and the columns its row literal covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumns {
    pub name: String,
    pub columns: Vec<MariadbColumn>,
}

fn unexpected(server: &MariadbServer, what: &'static str, row: &[String]) -> ClientError {
    ClientError::Unexpected {
        server: server.name.clone(),
        what,
        line: row.join("\t"),
    }
}

fn number(server: &MariadbServer, what: &'static str, row: &[String], at: usize) -> u64 {
    match row.get(at).map(|field| field.parse::<u64>()) {
        Some(Ok(value)) => value,
        _ => {
            tracing::debug!(message = "not a number", server = %server.name, what, row = %row.join("\t"));
            0
        }
    }
}

/// Describes `database` for a copy on behalf of `account`: only the users
/// named after the account (`account` or `account_*`) are described; other
/// grantees are listed in `skipped_users`.
pub async fn describe(
    server: &MariadbServer,
    database: &str,
    account_name: &str,
) -> Result<MariadbDatabaseDescription, CatalogueError> {
    let db = literal(database);
    let sql = format!(
        "SELECT 'V', VERSION(), @@hostname, @@datadir, @@port;\n\
         SELECT 'S', DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
           FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {db};\n\
         SELECT 'T', TABLE_NAME, TABLE_TYPE, IFNULL(ENGINE,''), IFNULL(TABLE_ROWS,0), \
           IFNULL(DATA_LENGTH,0), IFNULL(INDEX_LENGTH,0) \
           FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME;\n\
         SELECT 'R', ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES \
           WHERE ROUTINE_SCHEMA = {db} ORDER BY 2, 3;\n\
         SELECT 'G', TRIGGER_NAME FROM information_schema.TRIGGERS \
           WHERE TRIGGER_SCHEMA = {db} ORDER BY 2;\n\
         SELECT 'E', EVENT_NAME FROM information_schema.EVENTS \
           WHERE EVENT_SCHEMA = {db} ORDER BY 2;\n\
         SELECT DISTINCT 'U', User, Host FROM (\
           SELECT User, Host FROM mysql.db WHERE {db} LIKE Db \
           UNION ALL SELECT User, Host FROM mysql.tables_priv WHERE Db = {db} \
           UNION ALL SELECT User, Host FROM mysql.columns_priv WHERE Db = {db} \
           UNION ALL SELECT User, Host FROM mysql.procs_priv WHERE Db = {db}) AS grantees \
           ORDER BY 2, 3;\n"
    );
    let rows = client::query(server, &sql, Some(SHORT)).await?;
    let mut description = MariadbDatabaseDescription::default();
    let mut exists = false;
    let mut grantees = Vec::new();
    for row in &rows {
        match row.first().map(String::as_str) {
            Some("V") if row.len() == 5 => {
                description.server_version = row[1].clone();
                description.instance_id = instance_id(&row[2], &row[3], &row[4]);
            }
            Some("S") if row.len() == 3 => {
                exists = true;
                description.character_set = row[1].clone();
                description.collation = row[2].clone();
            }
            Some("T") if row.len() == 7 => match row[2].as_str() {
                "VIEW" => description.views.push(row[1].clone()),
                "BASE TABLE" | "SYSTEM VERSIONED" => description.tables.push(MariadbTable {
                    name: row[1].clone(),
                    engine: row[3].clone(),
                    rows_estimate: number(server, "table rows", row, 4),
                    data_bytes: number(server, "table size", row, 5),
                    index_bytes: number(server, "index size", row, 6),
                }),
                // Sequences come with the schema (CREATE SEQUENCE, SETVAL).
                _ => {}
            },
            Some("R") if row.len() == 3 => {
                description.routines.push(format!("{} {}", row[1], row[2]))
            }
            Some("G") if row.len() == 2 => description.triggers.push(row[1].clone()),
            Some("E") if row.len() == 2 => description.events.push(row[1].clone()),
            Some("U") if row.len() == 3 => grantees.push((row[1].clone(), row[2].clone())),
            _ => return Err(unexpected(server, "the description of a database", row).into()),
        }
    }
    if !exists {
        return Err(CatalogueError::NoDatabase {
            server: server.name.clone(),
            database: database.to_owned(),
        });
    }
    for (user, host) in grantees {
        if host.is_empty() {
            description
                .skipped_users
                .push(format!("{user}: a role (roles are not copied)"));
        } else if crate::inventory::mariadb::account_of(&user, [account_name]).is_none() {
            description.skipped_users.push(format!(
                "{user}@{host}: not a user of account {account_name}"
            ));
        } else {
            description
                .users
                .push(describe_user(server, &user, &host).await?);
        }
    }
    Ok(description)
}

/// SHA-256 of what tells one server instance from another.
fn instance_id(hostname: &str, datadir: &str, port: &str) -> String {
    let text = format!("{hostname}\0{datadir}\0{port}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The instance id of `server` (see [`describe`]).
pub async fn server_instance_id(server: &MariadbServer) -> Result<String, ClientError> {
    let rows = client::query(
        server,
        "SELECT @@hostname, @@datadir, @@port;\n",
        Some(SHORT),
    )
    .await?;
    match rows.first() {
        Some(row) if row.len() == 3 => Ok(instance_id(&row[0], &row[1], &row[2])),
        _ => Err(ClientError::Unexpected {
            server: server.name.clone(),
            what: "SELECT @@hostname, @@datadir, @@port",
            line: rows.first().map(|row| row.join("\t")).unwrap_or_default(),
        }),
    }
}

async fn describe_user(
    server: &MariadbServer,
    user: &str,
    host: &str,
) -> Result<MariadbUser, CatalogueError> {
    let who = account(user, host);
    let rows = client::query(
        server,
        &format!("SHOW CREATE USER {who};\nSHOW GRANTS FOR {who};\n"),
        Some(SHORT),
    )
    .await?;
    let mut lines = rows.into_iter().map(|row| row.join("\t"));
    let create_user = lines
        .next()
        .filter(|line| line.starts_with("CREATE USER "))
        .ok_or_else(|| ClientError::Unexpected {
            server: server.name.clone(),
            what: "SHOW CREATE USER",
            line: String::new(),
        })?;
    let grants: Vec<String> = lines.collect();
    Ok(MariadbUser {
        user: user.to_owned(),
        host: host.to_owned(),
        create_user,
        grants: grants_of(&grants),
    })
}

/// The base tables of `database` with the columns their rows are copied
/// by (generated columns left out), in name order.
pub async fn base_tables(
    server: &MariadbServer,
    database: &str,
) -> Result<Vec<TableColumns>, CatalogueError> {
    let sql = format!(
        "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, IFNULL(c.CHARACTER_SET_NAME,''), \
           IFNULL(c.GENERATION_EXPRESSION,'') \
         FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
           ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = {} AND t.TABLE_TYPE IN ('BASE TABLE','SYSTEM VERSIONED') \
         ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION;\n",
        literal(database)
    );
    let rows = client::query(server, &sql, Some(SHORT)).await?;
    let mut tables: Vec<TableColumns> = Vec::new();
    for row in &rows {
        let [table, column, data_type, charset, generation] = row.as_slice() else {
            return Err(unexpected(server, "the columns of a table", row).into());
        };
        if tables.last().is_none_or(|last| last.name != *table) {
            tables.push(TableColumns {
                name: table.clone(),
                columns: Vec::new(),
            });
        }
        if !generation.is_empty() {
            continue;
        }
        if let Some(last) = tables.last_mut() {
            last.columns.push(MariadbColumn {
                name: column.clone(),
                encoding: encoding_for(data_type, charset).into(),
            });
        }
    }
    Ok(tables)
}

/// Row counts and checksums of `tables` (every base table when empty), all
/// read in one consistent snapshot.
pub async fn checksums(
    server: &MariadbServer,
    database: &str,
    tables: &[String],
) -> Result<Vec<MariadbTableChecksum>, CatalogueError> {
    let all = base_tables(server, database).await?;
    let chosen: Vec<TableColumns> = if tables.is_empty() {
        all
    } else {
        tables
            .iter()
            .map(|name| {
                all.iter()
                    .find(|table| table.name == *name)
                    .cloned()
                    .ok_or_else(|| CatalogueError::NoTable {
                        server: server.name.clone(),
                        database: database.to_owned(),
                        table: name.clone(),
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut sql = String::from(
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n\
         START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n",
    );
    for table in &chosen {
        sql.push_str(&checksum_sql(database, &table.name, &table.columns));
        sql.push_str(";\n");
    }
    sql.push_str("COMMIT;\n");
    let rows = client::query(server, &sql, None).await?;
    compare_shape(server, &chosen, &rows)
}

/// Pairs checksum rows (one per table, in order) with their tables.
pub fn compare_shape(
    server: &MariadbServer,
    tables: &[TableColumns],
    rows: &[Vec<String>],
) -> Result<Vec<MariadbTableChecksum>, CatalogueError> {
    if rows.len() != tables.len() {
        return Err(ClientError::Unexpected {
            server: server.name.clone(),
            what: "checksums (one row per table)",
            line: format!("{} rows for {} tables", rows.len(), tables.len()),
        }
        .into());
    }
    tables
        .iter()
        .zip(rows)
        .map(|(table, row)| match row.as_slice() {
            [count, sum] => match (count.parse::<u64>(), parse_checksum(sum)) {
                (Ok(rows), Some(sum)) => Ok(MariadbTableChecksum {
                    table: table.name.clone(),
                    rows,
                    checksum: sum.to_string(),
                    columns: table.columns.clone(),
                }),
                _ => Err(unexpected(server, "a checksum", row).into()),
            },
            _ => Err(unexpected(server, "a checksum", row).into()),
        })
        .collect()
}

/// The names of the views, routines, triggers and events of `database`,
/// described as [`describe`] does, for the check after a copy.
pub async fn object_names(
    server: &MariadbServer,
    database: &str,
) -> Result<Vec<String>, CatalogueError> {
    let db = literal(database);
    let sql = format!(
        "SELECT 'view', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db};\n\
         SELECT 'routine', CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) FROM information_schema.ROUTINES \
           WHERE ROUTINE_SCHEMA = {db};\n\
         SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {db};\n\
         SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db};\n"
    );
    let rows = client::query(server, &sql, Some(SHORT)).await?;
    rows.iter()
        .map(|row| match row.as_slice() {
            [kind, name] => Ok(format!("{kind} {name}")),
            _ => Err(unexpected(server, "object names", row).into()),
        })
        .collect()
}
