//! The schema on the target: the source's pg_dump archive fetched into a
//! work file, its table of contents read (for the entries the target
//! accepts), restored section by section with the target's `pg_restore`
//! as the loader,
//! and the statistics that depend on post-data objects rebuilt
//! ([`analyze_after_post_data`]; each table is analyzed as soon as it is
//! loaded, see [`tables`](super::tables)).

use std::path::{Path, PathBuf};

use navette_proto::v1::DumpSchemaRequest;
use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use super::error::PostgresCopyError;
use super::session::conninfo_value;
use super::tools::PgTools;
use crate::config::PostgresqlServer;

/// A schema archive on disk, removed when dropped.
#[derive(Debug)]
pub struct Archive {
    pub path: PathBuf,
    pub bytes: u64,
}

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fetches the source's schema archive into `path` (mode 0600).
pub async fn fetch_schema(
    source: &mut PostgresSourceClient<Channel>,
    request: DumpSchemaRequest,
    path: PathBuf,
    database: &str,
) -> Result<Archive, PostgresCopyError> {
    let source_failed = |what: &str, status: tonic::Status| {
        PostgresCopyError::from_source(&request.server, &request.database, what, &status)
    };
    let mut stream = source
        .dump_schema(request.clone())
        .await
        .map_err(|status| source_failed("dumping the schema", status))?
        .into_inner();
    let io = |source| PostgresCopyError::Io {
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(io)?;
    let mut archive = Archive {
        path: path.clone(),
        bytes: 0,
    };
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| source_failed("dumping the schema", status))?
    {
        file.write_all(&chunk.data).await.map_err(io)?;
        archive.bytes += chunk.data.len() as u64;
    }
    file.flush().await.map_err(io)?;
    if archive.bytes == 0 {
        return Err(PostgresCopyError::Tool {
            database: database.to_owned(),
            program: "pg_dump (on the source)".to_owned(),
            message: "it produced an empty archive".to_owned(),
        });
    }
    Ok(archive)
}

/// Runs a PostgreSQL client program to completion; an error with its
/// standard error unless it succeeds.
async fn run(
    mut command: tokio::process::Command,
    program: &str,
    tools: &PgTools,
    database: &str,
) -> Result<(), PostgresCopyError> {
    let failed = |message: String| PostgresCopyError::Tool {
        database: database.to_owned(),
        program: program.to_owned(),
        message,
    };
    let output = command.output().await.map_err(|error| {
        failed(format!(
            "cannot run {}: {error}",
            tools.program(program).display()
        ))
    })?;
    let errors = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(failed(format!("{}: {}", output.status, errors.trim())));
    }
    if !errors.trim().is_empty() {
        tracing::debug!(message = "PostgreSQL tool said", program, %database, output = %errors.trim());
    }
    Ok(())
}

/// Refuses a `maintenance_work_mem` that is not a plain memory size
/// (`256MB`): it goes into SQL and into PGOPTIONS as it is.
pub fn check_memory_size(database: &str, memory: &str) -> Result<(), PostgresCopyError> {
    if memory.is_empty() || !memory.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PostgresCopyError::Refused {
            database: database.to_owned(),
            reason: format!("maintenance_work_mem {memory:?} is not a memory size"),
        });
    }
    Ok(())
}

/// What [`pg_restore`] restores of an archive.
#[derive(Clone, Copy, Debug)]
pub struct Section<'a> {
    /// `pre-data` or `post-data`.
    pub name: &'a str,
    /// Parallel jobs.
    pub jobs: usize,
    /// Set in its sessions (e.g. `256MB`): index builds sort in memory
    /// rather than on disk.
    pub maintenance_work_mem: Option<&'a str>,
    /// Only the entries of this table of contents (the accepted ones, see
    /// [`check_archive`](super::acceptance::check_archive)).
    pub list: Option<&'a Path>,
}

/// `pg_restore --section=<section>` of `archive` into `database`, stopping
/// at the first error, connected as `server` says: the copy passes the
/// loader's ([`super::loader`]), so the customer's schema never runs with
/// more than the account's power. Tablespaces are not restored (the
/// target's may differ): objects go to the default one.
pub async fn pg_restore(
    tools: &PgTools,
    server: &PostgresqlServer,
    database: &str,
    archive: &Path,
    section: Section<'_>,
) -> Result<(), PostgresCopyError> {
    let Section {
        name: section,
        jobs,
        maintenance_work_mem,
        list,
    } = section;
    let mut command = tools.command("pg_restore", server);
    if let Some(list) = list {
        command.arg(format!("--use-list={}", list.display()));
    }
    if let Some(memory) = maintenance_work_mem {
        check_memory_size(database, memory)?;
        command.env("PGOPTIONS", format!("-c maintenance_work_mem={memory}"));
    }
    command
        .arg(format!("--section={section}"))
        .arg("--exit-on-error")
        .arg("--no-tablespaces")
        .arg(format!("--jobs={}", jobs.max(1)))
        .arg(format!("--dbname=dbname={}", conninfo_value(database)))
        .arg(archive);
    run(command, "pg_restore", tools, database).await
}

/// The archive's table of contents (`pg_restore --list`), for
/// [`check_archive`](super::acceptance::check_archive). Reads the work
/// file only; no server is involved.
pub async fn table_of_contents(
    tools: &PgTools,
    server: &PostgresqlServer,
    database: &str,
    archive: &Path,
) -> Result<String, PostgresCopyError> {
    let failed = |message: String| PostgresCopyError::Tool {
        database: database.to_owned(),
        program: "pg_restore --list".to_owned(),
        message,
    };
    let output = tools
        .command("pg_restore", server)
        .arg("--list")
        .arg(archive)
        .output()
        .await
        .map_err(|error| {
            failed(format!(
                "cannot run {}: {error}",
                tools.program("pg_restore").display()
            ))
        })?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Writes a table of contents for `pg_restore --use-list`, mode 0600.
pub async fn write_list(list: &Path, text: &str) -> Result<(), PostgresCopyError> {
    let io = |source| PostgresCopyError::Io {
        path: list.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(list)
        .await
        .map_err(io)?;
    file.write_all(text.as_bytes()).await.map_err(io)?;
    file.flush().await.map_err(io)
}

/// Relations whose statistics need the post-data section: tables with
/// expression indexes (their expressions get statistics of their own) or
/// extended statistics, tables the data phase does not load (members of an
/// extension), partitioned tables (their statistics cover all partitions:
/// only an explicit ANALYZE gathers them) and populated materialized views.
const ANALYZED_AFTER_POST_DATA: &str = "\
    SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
      JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' \
       AND c.relpersistence <> 't' AND pg_has_role(c.relowner, 'USAGE') \
       AND (c.relkind = 'p' \
            OR (c.relkind = 'm' AND c.relispopulated) \
            OR (c.relkind = 'r' AND ( \
                EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indexprs IS NOT NULL) \
                OR EXISTS (SELECT FROM pg_statistic_ext x WHERE x.stxrelid = c.oid) \
                OR EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype = 'e')))) \
     ORDER BY 1";

/// `ANALYZE` of what needs the post-data section's objects
/// ([`ANALYZED_AFTER_POST_DATA`]), in one statement; nothing for most
/// databases.
pub async fn analyze_after_post_data(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<String> = client
        .query(ANALYZED_AFTER_POST_DATA, &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(&format!("ANALYZE {}", names.join(", ")))
        .await
}
