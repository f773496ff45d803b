//! PostgreSQL's client programs (`pg_dump`, `pg_restore`): where
//! they are and how to run them against a server of this host.
//!
//! A server's configuration may name them (`bin_dir`, `library_path`:
//! [`PgTools::configured`]); otherwise [`PgTools::locate`] looks where
//! distributions install each major version (`/usr/lib/postgresql/<major>/bin`
//! on Debian, `/usr/pgsql-<major>/bin` on RHEL), then falls back to `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;

use tokio::process::Command;

use crate::config::PostgresqlServer;

/// A directory of PostgreSQL client programs of one major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTools {
    /// Holds `pg_dump` and `pg_restore`; `None`: look in `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// `LD_LIBRARY_PATH` for programs not installed system-wide (such as
    /// the rig's PostgreSQL 18).
    pub library_path: Option<OsString>,
}

impl PgTools {
    /// The programs in `bin_dir`.
    pub fn at(bin_dir: impl Into<PathBuf>) -> PgTools {
        PgTools {
            bin_dir: Some(bin_dir.into()),
            library_path: None,
        }
    }

    /// Sets `LD_LIBRARY_PATH` for the programs.
    pub fn with_library_path(mut self, path: impl Into<OsString>) -> PgTools {
        self.library_path = Some(path.into());
        self
    }

    /// The programs the server's configuration names (`bin_dir`,
    /// `library_path`), if it does.
    pub fn configured(server: &PostgresqlServer) -> Option<PgTools> {
        let bin_dir = server.bin_dir.clone()?;
        Some(PgTools {
            bin_dir: Some(bin_dir),
            library_path: server.library_path.clone().map(OsString::from),
        })
    }

    /// Where the distribution installs the programs of `major`, else `PATH`.
    pub fn locate(major: u32) -> PgTools {
        let candidates = [
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
            PathBuf::from(format!("/usr/pgsql-{major}/bin")),
        ];
        let bin_dir = candidates
            .into_iter()
            .find(|dir| dir.join("pg_dump").is_file());
        PgTools {
            bin_dir,
            library_path: None,
        }
    }

    /// The path (or bare name, for `PATH`) of `program`.
    pub fn program(&self, program: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        }
    }

    /// A command running `program` against `server` (connection in the
    /// environment: PGHOST, PGPORT, PGUSER, PGPASSWORD), its inherited
    /// PG* variables removed so nothing else steers it.
    pub fn command(&self, program: &str, server: &PostgresqlServer) -> Command {
        let mut command = Command::new(self.program(program));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(&name);
            }
        }
        command
            .env("PGHOST", &server.host)
            .env("PGPORT", server.port.to_string())
            .env("PGUSER", &server.user)
            .env("PGAPPNAME", "navette-agent copy")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(password) = server.password.as_deref().filter(|p| !p.is_empty()) {
            command.env("PGPASSWORD", password);
        }
        if let Some(path) = &self.library_path {
            command.env("LD_LIBRARY_PATH", path);
        }
        command
    }

    /// The major version `program --version` reports ("pg_dump (PostgreSQL)
    /// 15.18 (Debian ...)" gives 15).
    pub async fn major_version(&self, program: &str) -> std::io::Result<u32> {
        let mut command = Command::new(self.program(program));
        command.arg("--version").kill_on_drop(true);
        if let Some(path) = &self.library_path {
            command.env("LD_LIBRARY_PATH", path);
        }
        let output = command.output().await?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_major(&text).ok_or_else(|| {
            std::io::Error::other(format!(
                "{} --version answered {:?}",
                self.program(program).display(),
                text.trim()
            ))
        })
    }

    /// Describes where the programs are, for messages.
    pub fn describe(&self) -> String {
        match &self.bin_dir {
            Some(dir) => dir.display().to_string(),
            None => "PATH".to_owned(),
        }
    }
}

/// The major version in a `--version` line.
fn parse_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn versions_are_read_from_the_version_line() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 18.6\n"), Some(18));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn programs_are_found_in_their_directory_or_path() {
        let tools = PgTools::at("/opt/pg/bin").with_library_path("/opt/pg/lib");
        assert_eq!(tools.program("pg_dump"), Path::new("/opt/pg/bin/pg_dump"));
        let path = PgTools {
            bin_dir: None,
            library_path: None,
        };
        assert_eq!(path.program("pg_restore"), Path::new("pg_restore"));
        assert_eq!(path.describe(), "PATH");
    }
}
