//! Forwarding the old host's sites to the new host at the switch, so that
//! requests held during the freeze and clients with stale DNS reach the new
//! host, with the client's address kept (`X-Real-IP`, `X-Forwarded-For`;
//! the new host's web server trusts them from the platform's hosts with
//! `set_real_ip_from`, an operator's setting), undoing it on rollback, and
//! ending it for good once the old DNS records' TTL has passed
//! ([`Cutover::end_forward`]).
//!
//! # What happens to a request the freeze held
//!
//! During the freeze, nginx keeps accepting requests: it has passed them
//! to the account's FPM socket, where they wait in the frozen pool's
//! backlog (or in a frozen worker). At the switch they must be answered by
//! the new host, not by the old pool (whose databases now refuse it) and
//! not with an error. Three pieces make that happen:
//!
//! 1. Every PHP site's server block carries, from `StartSites` on, a
//!    fallback for a failed FastCGI upstream: `error_page 502 =
//!    @navette_moved`, a named location that proxies the request (method,
//!    body and headers kept, the client's address added) to the unix
//!    socket [`moved_socket`]. Outside a cutover nothing listens there, the
//!    fallback fails too and the client gets the same 502 as before
//!    (`recursive_error_pages` is off): nothing changes for the customer.
//! 2. [`Cutover::forward`] replaces the account's server blocks with a
//!    forwarding block: its domains proxied to the new host, and a server
//!    listening on [`moved_socket`] that proxies whatever arrives there
//!    to the new host too, then reloads nginx. New requests go to the new
//!    host directly. The requests already held stay with the old nginx
//!    workers, which finish them under their old configuration.
//! 3. It then kills the account's FPM (master and workers). The held
//!    FastCGI connections break; each old worker answers its request
//!    through the fallback of (1): the unix socket is now served by the
//!    *new* workers (nginx's listening sockets belong to the master), and
//!    the request reaches the new host. The client sees a slower answer,
//!    not an error. With cgroup v1's freezer a kill is taken when the group
//!    thaws, so this happens at `ThawAccount`; with cgroup v2 at once.
//!
//! A request a frozen worker had *started* is run again on the new host:
//! its database work on the old host was either committed before the
//! fence (and is on the new host) or held by it and ended by the switch.
//! Its client had no answer, so this is what a client retry would do; a
//! worker frozen after it had begun sending its answer cannot be replayed
//! and its client sees the connection end.
//!
//! # Rollback
//!
//! [`Cutover::unforward`] puts the account's own server blocks back (saved
//! in the forward's record, [`super::state::ForwardRecord`]), reloads
//! nginx and starts the pool again (from its configuration file, left in
//! place); when the account is still frozen the pool cannot start (it
//! would freeze at birth), so the answer says so and `StartSites` after
//! `ThawAccount` starts it. The forward belongs after the point of no
//! return: requests the killed pool held, and every new one, are served by
//! the new host from then on, and a rollback would lose what they wrote
//! there.
//!
//! Every value in the forwarding block is a checked domain (from the
//! sites' record, checked again), an address parsed as an IP address, a
//! port number, or a path the agent made ([`crate::sites::nginx`]'s
//! rules).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::state::{self, ForwardRecord};
use super::{Cutover, CutoverError};
use crate::sites::definitions::is_valid_domain;
use crate::sites::fpm::{self, PoolPaths};
use crate::sites::nginx;

/// The socket the sites' fallback proxies to during a forward:
/// `<run_dir>/.forward/<account>.sock`. The directory belongs to the web
/// server's user, mode 0700, so no customer can connect to it and forge
/// the client address headers; nginx's master (root) creates the socket.
pub fn moved_socket(run_dir: &Path, account: &str) -> PathBuf {
    run_dir.join(".forward").join(format!("{account}.sock"))
}

/// What the sites' record says (`sites::Record`'s domains).
#[derive(Deserialize)]
struct SitesRecord {
    domains: Vec<String>,
}

/// What [`Cutover::forward`] answers.
#[derive(Clone, Debug)]
pub struct ForwardOutcome {
    pub domains: Vec<String>,
    pub already: bool,
}

/// The forwarding server blocks of `account`'s `domains` to `upstream`
/// (`http://<address>:<port>`), with the fallback socket `moved`.
pub fn render(
    migration_id: &str,
    account: &str,
    domains: &[String],
    upstream: &str,
    moved: &Path,
) -> Result<String, CutoverError> {
    if let Some(bad) = domains.iter().find(|d| !is_valid_domain(d)) {
        return Err(CutoverError::Precondition(format!(
            "account {account}: the sites' record holds {bad:?}, not a host name; nothing is forwarded"
        )));
    }
    let moved = quoted(moved)?.replacen('"', "\"unix:", 1);
    let headers = |real_ip: &str, forwarded: &str| {
        format!(
            "        proxy_set_header Host $host;\n        \
             proxy_set_header X-Real-IP {real_ip};\n        \
             proxy_set_header X-Forwarded-For {forwarded};\n        \
             proxy_set_header X-Forwarded-Proto $scheme;\n        \
             proxy_http_version 1.1;\n        \
             proxy_set_header Connection \"\";\n        \
             proxy_connect_timeout 5s;\n"
        )
    };
    Ok(format!(
        "# Forward of account {account}'s sites to its new host (migration {migration_id}), \
         written by navette-agent (ForwardSites); UnforwardSites restores its sites. Do not edit.\n\
         server {{\n    listen 80;\n    server_name {names};\n    \
         location / {{\n        proxy_pass {upstream};\n{direct}    }}\n}}\n\
         # Requests the account's frozen pool held, sent back by its sites' fallback.\n\
         server {{\n    listen {moved};\n    \
         location / {{\n        proxy_pass {upstream};\n{relayed}    }}\n}}\n",
        names = domains.join(" "),
        direct = headers("$remote_addr", "$proxy_add_x_forwarded_for"),
        relayed = headers("$http_x_real_ip", "$http_x_forwarded_for"),
    ))
}

/// A path as a quoted nginx string (the rules of `sites::nginx`).
fn quoted(path: &Path) -> Result<String, CutoverError> {
    let text = path.to_str().unwrap_or("");
    let unsafe_char = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\' | '$' | '#')
    };
    if text.is_empty() || text.chars().any(unsafe_char) {
        return Err(CutoverError::WebServer(nginx::WebServerError::UnsafePath(
            path.to_owned(),
        )));
    }
    Ok(format!("\"{text}\""))
}

/// `http://<address>:<port>`, the address parsed (brackets for IPv6).
pub fn upstream(address: &str, port: u16) -> Result<String, CutoverError> {
    let parsed: IpAddr = address.parse().map_err(|_| {
        CutoverError::BadRequest(format!("new_address: {address:?} is not an IP address"))
    })?;
    Ok(match parsed {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    })
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CutoverError + 'a {
    move |source| CutoverError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The account's server block files, (name, text), sorted.
fn account_blocks(dir: &Path, account: &str) -> Result<Vec<(String, String)>, CutoverError> {
    let prefix = format!("{account}.");
    let mut blocks = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(blocks),
        Err(source) => return Err(io("listing", dir)(source)),
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(&prefix) && name.ends_with(".conf") {
            let text =
                std::fs::read_to_string(entry.path()).map_err(io("reading", &entry.path()))?;
            blocks.push((name, text));
        }
    }
    blocks.sort();
    Ok(blocks)
}

impl Cutover {
    fn reload_web_server(&self) -> Result<(), CutoverError> {
        let sites = &self.config.sites;
        Ok(nginx::reload(
            &sites.web_server_pid_file,
            sites.reload_command.as_deref(),
        )?)
    }

    /// Forwards `account`'s domains on this host to `address:port` for
    /// `migration_id`, and kills its pool so that what it held fails over
    /// (see the module documentation). Idempotent.
    pub fn forward(
        &self,
        migration_id: &str,
        account: &str,
        address: &str,
        port: u16,
    ) -> Result<ForwardOutcome, CutoverError> {
        let started = std::time::Instant::now();
        let sites = &self.config.sites;
        let upstream = upstream(address, port)?;
        let path = state::path(&self.config.state_dir, "forward", account);
        let (record, already) = match state::read::<ForwardRecord>(&path)? {
            Some(record) if record.migration_id != migration_id => {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "forwarded",
                    other: record.migration_id,
                });
            }
            Some(record) => (record, true),
            None => {
                let paths = PoolPaths::new(&sites.run_dir, account);
                let record_path = paths.dir.join("sites.json");
                let text = std::fs::read_to_string(&record_path).map_err(|_| {
                    CutoverError::Precondition(format!(
                        "account {account} has no sites running on this host ({} is missing): nothing to forward",
                        record_path.display()
                    ))
                })?;
                let sites_record: SitesRecord = serde_json::from_str(&text).map_err(|error| {
                    CutoverError::Precondition(format!(
                        "account {account}: the sites' record {} is damaged: {error}",
                        record_path.display()
                    ))
                })?;
                let record = ForwardRecord {
                    migration_id: migration_id.to_owned(),
                    account: account.to_owned(),
                    new_address: address.to_owned(),
                    new_port: port,
                    domains: sites_record.domains,
                    blocks: account_blocks(&sites.server_blocks_dir, account)?,
                };
                // Recorded before anything changes.
                state::write(&path, &record)?;
                (record, false)
            }
        };
        if record.new_address != address || record.new_port != port {
            return Err(CutoverError::BadRequest(format!(
                "account {account} is already forwarded to {}:{} for migration {migration_id}",
                record.new_address, record.new_port
            )));
        }
        let moved = moved_socket(&sites.run_dir, account);
        if let Some(dir) = moved.parent() {
            ensure_moved_dir(dir, &sites.web_server_user)?;
        }
        if !already {
            // A socket file an earlier forward's web server left would
            // make this one's `listen` fail.
            let _ = std::fs::remove_file(&moved);
        }
        let block = render(migration_id, account, &record.domains, &upstream, &moved)?;
        let written_us = started.elapsed().as_micros() as u64;
        if nginx::write_blocks(&sites.server_blocks_dir, account, &[block])? {
            self.reload_web_server()?;
        }
        let reloaded_us = started.elapsed().as_micros() as u64;
        let killed = kill_pool(account, &PoolPaths::new(&sites.run_dir, account));
        tracing::info!(
            message = "account's sites forwarded to the new host",
            migration = %migration_id,
            %account,
            upstream = %upstream,
            domains = ?record.domains,
            pool_processes_killed = killed,
            already,
            written_us,
            reloaded_us,
            killed_us = started.elapsed().as_micros() as u64
        );
        Ok(ForwardOutcome {
            domains: record.domains,
            already,
        })
    }

    /// Rollback: the account's own server blocks back, the web server
    /// reloaded, the pool started again unless the account is frozen.
    /// Returns (restored, pool started). Idempotent.
    pub fn unforward(
        &self,
        migration_id: &str,
        account: &str,
    ) -> Result<(bool, bool), CutoverError> {
        let sites = &self.config.sites;
        let path = state::path(&self.config.state_dir, "forward", account);
        let record = match state::read::<ForwardRecord>(&path)? {
            None => return Ok((false, false)),
            Some(record) if record.migration_id != migration_id => {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "forwarded",
                    other: record.migration_id,
                });
            }
            Some(record) => record,
        };
        // The pool first, so that the restored blocks find it.
        let paths = PoolPaths::new(&sites.run_dir, account);
        let group = self.groups_for_sites(account)?;
        let frozen = group.is_frozen()?;
        let mut started = false;
        if paths.config.exists() && fpm::running_master(&paths).is_none() && !frozen {
            fpm::start(
                account,
                &sites.fpm_command,
                &paths,
                &group.path().join("cgroup.procs"),
            )?;
            started = true;
        }
        nginx::remove_blocks(&sites.server_blocks_dir, account)?;
        for (name, text) in &record.blocks {
            let file = sites.server_blocks_dir.join(name);
            std::fs::write(&file, text).map_err(io("writing", &file))?;
        }
        self.reload_web_server()?;
        state::remove(&path)?;
        tracing::info!(message = "account's sites restored on this host", migration = %migration_id, %account, pool_started = started, frozen);
        Ok((true, started))
    }

    /// After the switch, once no client can still hold the old DNS
    /// answer: the forwarding block removed and the web server reloaded,
    /// the fallback socket and the forward's record removed; the account's
    /// own blocks are not restored and no pool starts. Returns whether a
    /// forward was ended. Idempotent.
    pub fn end_forward(&self, migration_id: &str, account: &str) -> Result<bool, CutoverError> {
        let sites = &self.config.sites;
        let path = state::path(&self.config.state_dir, "forward", account);
        match state::read::<ForwardRecord>(&path)? {
            None => return Ok(false),
            Some(record) if record.migration_id != migration_id => {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "forwarded",
                    other: record.migration_id,
                });
            }
            Some(_) => {}
        }
        if nginx::remove_blocks(&sites.server_blocks_dir, account)? {
            self.reload_web_server()?;
        }
        let moved = moved_socket(&sites.run_dir, account);
        match std::fs::remove_file(&moved) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("removing", &moved)(error)),
        }
        state::remove(&path)?;
        tracing::info!(message = "account's forward to the new host ended", migration = %migration_id, %account);
        Ok(true)
    }

    fn groups_for_sites(
        &self,
        account: &str,
    ) -> Result<crate::cgroups::AccountGroup, CutoverError> {
        let sites = &self.config.sites;
        Ok(
            crate::cgroups::AccountGroups::open(&sites.cgroup_mount, &sites.cgroup_base)?
                .ensure(account)?,
        )
    }
}

/// The fallback sockets' directory: the web server user's, 0700.
fn ensure_moved_dir(dir: &Path, web_server_user: &str) -> Result<(), CutoverError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let user = nix::unistd::User::from_name(web_server_user)
        .ok()
        .flatten()
        .ok_or_else(|| {
            CutoverError::Precondition(format!(
                "the web server user {web_server_user:?} does not exist on this host"
            ))
        })?;
    std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(io("setting the owner of", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("setting the mode of", dir))
}

/// SIGKILL to the account's FPM master and its workers; how many.
fn kill_pool(account: &str, paths: &PoolPaths) -> u32 {
    let Some(master) = fpm::running_master(paths) else {
        return 0;
    };
    let mut targets = vec![master.as_raw()];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                });
            if parent == Some(master.as_raw()) {
                targets.push(pid);
            }
        }
    }
    let mut killed = 0;
    for pid in targets {
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            killed += 1;
        }
    }
    tracing::info!(message = "account's pool killed for the forward", %account, fpm_pid = master.as_raw(), killed);
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_block_carries_the_client_address_to_the_new_host() -> Result<(), CutoverError> {
        let upstream = upstream("192.0.2.11", 80)?;
        let block = render(
            "m-1",
            "alice",
            &["alice.example".into(), "www.alice.example".into()],
            &upstream,
            Path::new("/run/sites/.forward/alice.sock"),
        )?;
        assert!(block.contains("server_name alice.example www.alice.example;"));
        assert!(block.contains("proxy_pass http://192.0.2.11:80;"));
        assert!(block.contains("proxy_set_header X-Real-IP $remote_addr;"));
        assert!(block.contains("listen \"unix:/run/sites/.forward/alice.sock\";"));
        assert!(block.contains("proxy_set_header X-Real-IP $http_x_real_ip;"));
        assert_eq!(block.matches('{').count(), block.matches('}').count());
        assert_eq!(upstream_v6()?, "http://[2001:db8::11]:8080");
        Ok(())
    }

    fn upstream_v6() -> Result<String, CutoverError> {
        upstream("2001:db8::11", 8080)
    }

    #[test]
    fn bad_addresses_and_domains_are_refused() {
        for bad in ["192.0.2.11; include /etc/shadow", "example.com", ""] {
            assert!(upstream(bad, 80).is_err(), "{bad:?}");
        }
        let block = render(
            "m-1",
            "alice",
            &["alice.example; include /etc/shadow".into()],
            "http://192.0.2.11:80",
            Path::new("/run/x.sock"),
        );
        assert!(block.is_err());
        let block = render(
            "m-1",
            "alice",
            &["alice.example".into()],
            "http://192.0.2.11:80",
            Path::new("/run/a b.sock"),
        );
        assert!(block.is_err());
    }
}
