//! The host's web server (nginx): one server block per site in
//! `[sites] server_blocks_dir`, and the reload after they change.
//!
//! Only checked sites ([`Site`]) are written: every value that reaches a
//! block is a checked host name, a path of checked parts, or a path the
//! agent made, and [`render`] refuses any path with a character nginx
//! would read as syntax. Each block serves its document root with
//! `disable_symlinks if_not_owner` (a customer's symlink to a file it does
//! not own is not followed), hides dot files, and passes PHP to the
//! account's own pool socket only. Files are named `<account>.<n>.conf`
//! (account names hold no '.'), written to a temporary name and renamed,
//! so the web server never reads half a block.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::definitions::{Runtime, Site};

/// Why the server blocks or the reload failed.
#[derive(Debug, thiserror::Error)]
pub enum WebServerError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "path {} holds a character a server block cannot carry safely (whitespace, quotes, ';', braces, '$', '#' or '\\')",
        .0.display()
    )]
    UnsafePath(PathBuf),
    #[error(
        "the web server is not running: no pid in {} ({reason}); start it, or set `[sites] reload_command`",
        pid_file.display()
    )]
    NotRunning { pid_file: PathBuf, reason: String },
    #[error("reloading the web server: {0}")]
    Reload(String),
}

/// A path as a quoted nginx string, refused if it could break out.
fn quoted(path: &Path) -> Result<String, WebServerError> {
    let text = path
        .to_str()
        .ok_or_else(|| WebServerError::UnsafePath(path.to_owned()))?;
    let unsafe_char = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\' | '$' | '#')
    };
    if text.is_empty() || text.chars().any(unsafe_char) {
        return Err(WebServerError::UnsafePath(path.to_owned()));
    }
    Ok(format!("\"{text}\""))
}

/// The FastCGI parameters a PHP request gets (those of Debian's
/// `fastcgi_params`, written out so that the block does not depend on
/// where the web server keeps its files).
const FASTCGI_PARAMS: &str = "\
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param SCRIPT_NAME $fastcgi_script_name;
        fastcgi_param REQUEST_URI $request_uri;
        fastcgi_param DOCUMENT_URI $document_uri;
        fastcgi_param DOCUMENT_ROOT $document_root;
        fastcgi_param SERVER_PROTOCOL $server_protocol;
        fastcgi_param REQUEST_SCHEME $scheme;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param SERVER_SOFTWARE nginx;
        fastcgi_param REMOTE_ADDR $remote_addr;
        fastcgi_param REMOTE_PORT $remote_port;
        fastcgi_param SERVER_ADDR $server_addr;
        fastcgi_param SERVER_PORT $server_port;
        fastcgi_param SERVER_NAME $server_name;
        fastcgi_param REDIRECT_STATUS 200;
";

/// The server block of `site` of `account`, whose home is `home`; PHP goes
/// to `socket`. A request whose pool fails (502) is passed once to
/// `moved`, where nothing listens except during a migration's forward
/// (`cutover::forward`: it then reaches the account's new host), so that
/// requests a frozen pool held are answered there rather than failing.
pub fn render(
    account: &str,
    home: &Path,
    site: &Site,
    socket: &Path,
    moved: &Path,
) -> Result<String, WebServerError> {
    let root = quoted(&home.join(&site.document_root))?;
    let mut block = format!(
        "# Site of account {account}, written by navette-agent (StartSites); \
         StopSites removes it. Do not edit.\n\
         server {{\n    listen 80;\n    server_name {names};\n    root {root};\n    \
         disable_symlinks if_not_owner from=$document_root;\n    \
         location ~ /\\. {{ deny all; }}\n",
        names = site.domains.join(" "),
    );
    match site.runtime {
        Runtime::Static => block.push_str("    index index.html;\n"),
        Runtime::Php => {
            // The quotes go around the whole `unix:` token.
            let socket = quoted(socket)?.replacen('"', "\"unix:", 1);
            let pass = |script: &str| {
                format!(
                    "        fastcgi_pass {socket};\n        \
                     fastcgi_param SCRIPT_FILENAME {script};\n{FASTCGI_PARAMS}"
                )
            };
            block.push_str("    index index.php index.html;\n");
            // "/" is the site's index.php: the web server needs no access
            // to the home to find it (the pool, as the account, opens it).
            block.push_str(&format!(
                "    location = / {{\n{}    }}\n",
                pass("$document_root/index.php")
            ));
            block.push_str(&format!(
                "    location ~ \\.php$ {{\n{}    }}\n",
                pass("$document_root$fastcgi_script_name")
            ));
            // Outside a forward nothing listens on `moved`: the client
            // gets the 502 it got before (no second redirect).
            let moved = quoted(moved)?;
            block.push_str(&format!(
                "    error_page 502 = @navette_moved;\n    \
                 location @navette_moved {{\n        \
                 proxy_pass http://unix:{moved}:;\n        \
                 proxy_set_header Host $host;\n        \
                 proxy_set_header X-Real-IP $remote_addr;\n        \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n",
                moved = moved.trim_matches('"'),
            ));
        }
    }
    block.push_str("}\n");
    Ok(block)
}

/// The server blocks of `account` in `dir`.
fn account_files(dir: &Path, account: &str) -> Result<Vec<PathBuf>, WebServerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(WebServerError::Io {
                what: "listing",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let prefix = format!("{account}.");
    Ok(entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".conf"))
        })
        .map(|entry| entry.path())
        .collect())
}

/// Makes `dir` hold exactly `blocks` for `account` (rendered blocks, in
/// site order); returns whether anything changed.
pub fn write_blocks(dir: &Path, account: &str, blocks: &[String]) -> Result<bool, WebServerError> {
    std::fs::create_dir_all(dir).map_err(|source| WebServerError::Io {
        what: "creating",
        path: dir.to_owned(),
        source,
    })?;
    let mut changed = false;
    let mut wanted = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let path = dir.join(format!("{account}.{index}.conf"));
        wanted.push(path.clone());
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *block) {
            continue;
        }
        let temporary = dir.join(format!(".{account}.{index}.conf.new"));
        std::fs::write(&temporary, block).map_err(|source| WebServerError::Io {
            what: "writing",
            path: temporary.clone(),
            source,
        })?;
        std::fs::rename(&temporary, &path).map_err(|source| WebServerError::Io {
            what: "renaming into place",
            path: path.clone(),
            source,
        })?;
        changed = true;
    }
    for old in account_files(dir, account)? {
        if !wanted.contains(&old) {
            remove(&old)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Removes every server block of `account`; returns whether there was one.
pub fn remove_blocks(dir: &Path, account: &str) -> Result<bool, WebServerError> {
    let files = account_files(dir, account)?;
    for file in &files {
        remove(file)?;
    }
    Ok(!files.is_empty())
}

fn remove(path: &Path) -> Result<(), WebServerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WebServerError::Io {
            what: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Has the web server read its configuration again: `reload_command`, or
/// SIGHUP to the pid in `pid_file`.
pub fn reload(pid_file: &Path, reload_command: Option<&[String]>) -> Result<(), WebServerError> {
    if let Some([program, args @ ..]) = reload_command {
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|error| WebServerError::Reload(format!("cannot run {program}: {error}")))?;
        if !output.status.success() {
            return Err(WebServerError::Reload(format!(
                "{program} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        return Ok(());
    }
    let pid = super::fpm::read_pid(pid_file).map_err(|reason| WebServerError::NotRunning {
        pid_file: pid_file.to_owned(),
        reason,
    })?;
    let before = children(pid.as_raw());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|errno| {
        WebServerError::NotRunning {
            pid_file: pid_file.to_owned(),
            reason: format!("SIGHUP to pid {pid}: {errno}"),
        }
    })?;
    wait_reloaded(pid.as_raw(), &before)
}

/// How long nginx may take to start its workers on the new configuration.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the web server `master` serves the configuration it was
/// told to read: a SIGHUP only asks, and nginx answers asynchronously (it
/// starts new workers, then tells the old ones, `before`, to finish).
/// Done once a new worker runs and every old one is gone or shutting down
/// (its listening sockets closed), so that a site started here answers as
/// soon as `StartSites` returns, and a stopped one no longer does. A
/// master with no workers to compare (`before` empty) is not waited for.
fn wait_reloaded(master: i32, before: &[i32]) -> Result<(), WebServerError> {
    if before.is_empty() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + RELOAD_TIMEOUT;
    loop {
        let now = children(master);
        let started = now.iter().any(|pid| !before.contains(pid));
        let old_serving = now
            .iter()
            .filter(|pid| before.contains(pid))
            .any(|pid| !shutting_down(*pid));
        if started && !old_serving {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(WebServerError::Reload(format!(
                "the web server (pid {master}) did not switch to the new configuration within {} s of SIGHUP: it may be invalid; see the web server's error log",
                RELOAD_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The processes whose parent is `parent` (from `/proc/<pid>/stat`).
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent pid in a `/proc/<pid>/stat` line: the second field after
/// the command name, which is in parentheses and may hold anything.
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether nginx's process `pid` is an old worker finishing its requests
/// (nginx titles it `nginx: worker process is shutting down`), or gone.
fn shutting_down(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|title| String::from_utf8_lossy(&title).contains("shutting down"))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_the_command_name() {
        assert_eq!(parent_of("42 (nginx) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("43 (a) b) c) R 9 43"), Some(9));
        assert_eq!(parent_of("garbage"), None);
        // This test's own process is a child of its parent.
        let parent = std::os::unix::process::parent_id() as i32;
        assert!(children(parent).contains(&(std::process::id() as i32)));
    }

    #[test]
    fn a_block_serves_the_site_from_its_own_pool() -> Result<(), WebServerError> {
        let site = Site {
            domains: vec!["alice.example".into(), "www.alice.example".into()],
            document_root: PathBuf::from("www"),
            runtime: Runtime::Php,
        };
        let block = render(
            "alice",
            Path::new("/home/alice"),
            &site,
            Path::new("/run/sites/alice/php-fpm.sock"),
            Path::new("/run/sites/.forward/alice.sock"),
        )?;
        assert!(block.contains("server_name alice.example www.alice.example;"));
        assert!(block.contains("root \"/home/alice/www\";"));
        assert!(block.contains("disable_symlinks if_not_owner"));
        assert!(block.contains("fastcgi_pass \"unix:/run/sites/alice/php-fpm.sock\";"));
        assert!(block.contains("error_page 502 = @navette_moved;"));
        assert!(block.contains("proxy_pass http://unix:/run/sites/.forward/alice.sock:;"));
        assert_eq!(block.matches('{').count(), block.matches('}').count());
        Ok(())
    }

    #[test]
    fn a_path_that_could_break_out_is_refused() {
        let site = Site {
            domains: vec!["alice.example".into()],
            document_root: PathBuf::from("www"),
            runtime: Runtime::Php,
        };
        for home in [
            "/home/a;b",
            "/home/a b",
            "/home/a\"b",
            "/home/$x",
            "/home/a}",
        ] {
            let error = render(
                "alice",
                Path::new(home),
                &site,
                Path::new("/run/s.sock"),
                Path::new("/run/m.sock"),
            );
            assert!(
                matches!(error, Err(WebServerError::UnsafePath(_))),
                "{home}"
            );
        }
    }
}
