//! The platform's authoritative DNS in the rig: Knot (`knotd`) in a host
//! of its own, serving the zones a test gives it, with one TSIG key
//! (hmac-sha256) its ACL lets update them; and resolution through it for
//! programs run in a host with `ip netns exec`.
//!
//! Owns: the server's config, zone files and secret file under
//! `<rig>/dns/`, starting it, `kdig` and `knsupdate` from a host (to look
//! at answers, and to change a record "behind Navette's back"), and
//! `/etc/netns/<namespace>/resolv.conf`. `ip netns exec NAME` bind-mounts
//! every file of `/etc/netns/NAME/` over `/etc/`, so curl, psql, pgbench
//! and mysql run in that host resolve through the rig's DNS; Rust code
//! entering a namespace with `setns` ([`Netns::run_in`]) does not see it.
//! [`crate::sweep::delete_namespace`] removes the folder with the
//! namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::install::{run_checked, run_with_input};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir, make_dir_owned, set_mode};

/// Where `ip netns exec` finds a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The DNS host's address.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// The key's name on the server.
pub const KEY_NAME: &str = "navette.";

/// A zone and its records (`owner ttl type data`, owners absolute or
/// relative to the zone, `@` for its apex). SOA and NS are added.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    pub name: String,
    pub records: Vec<String>,
}

impl ZoneSpec {
    pub fn new(name: &str, records: &[&str]) -> ZoneSpec {
        ZoneSpec {
            name: name.trim_end_matches('.').to_owned(),
            records: records.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// A running knotd.
#[derive(Clone, Debug)]
pub struct DnsServer {
    host: Netns,
    process: ChildProcess,
    /// The key's secret, base64, as the server's config holds it.
    secret: String,
    /// The secret alone in a file of mode 0600, for the controller's
    /// `[dns] tsig_secret_file`.
    secret_file: PathBuf,
}

impl Rig {
    /// Starts the platform's DNS on host `dns` (192.0.2.53, port 53, UDP
    /// and TCP) with `zones`, and waits until it answers for the first.
    pub fn start_dns(&self, zones: &[ZoneSpec]) -> anyhow::Result<DnsServer> {
        let host = self.add_namespace("dns", DNS_ADDR)?;
        let dir = host.root().join("knot");
        for sub in ["", "zones", "storage", "run"] {
            make_dir_owned(&dir.join(sub), 0o750, "knot")?;
        }
        let secret = random_secret()?;
        let secret_file = host.root().join("etc").join("tsig.secret");
        std::fs::write(&secret_file, format!("{secret}\n"))
            .with_context(|| format!("writing {}", secret_file.display()))?;
        set_mode(&secret_file, 0o600)?;
        let mut config = format!(
            "server:\n    rundir: \"{run}\"\n    user: knot:knot\n    listen: {DNS_ADDR}@53\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n    storage: \"{storage}\"\n\
             key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: navette_update\n    key: {KEY_NAME}\n    action: update\n\
             zone:\n",
            run = dir.join("run").display(),
            storage = dir.join("storage").display(),
        );
        for zone in zones {
            let file = dir.join("zones").join(format!("{}.zone", zone.name));
            let mut text = format!(
                "$ORIGIN {name}.\n$TTL 300\n@ SOA ns.platform.example. hostmaster.platform.example. 1 3600 600 86400 60\n@ NS ns.platform.example.\n",
                name = zone.name
            );
            for record in &zone.records {
                text.push_str(record);
                text.push('\n');
            }
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            chown_knot(&file)?;
            config.push_str(&format!(
                "  - domain: {name}.\n    storage: \"{zones}\"\n    file: \"{name}.zone\"\n    acl: navette_update\n    zonefile-sync: -1\n",
                name = zone.name,
                zones = dir.join("zones").display(),
            ));
        }
        let config_file = dir.join("knot.conf");
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let process = {
            let host = host.clone();
            let config_file = config_file.clone();
            self.spawn(&host.clone(), "knotd", move || {
                let mut command = host.command("knotd");
                command.arg("-c").arg(&config_file);
                command
            })?
        };
        let server = DnsServer {
            host,
            process,
            secret,
            secret_file,
        };
        if let Some(first) = zones.first() {
            let name = first.name.clone();
            let client = self.client().clone();
            self.wait_until("the rig's DNS answering", Duration::from_secs(10), || {
                server.process.check_running()?;
                Ok(!server.query(&client, &name, "SOA")?.is_empty())
            })?;
        }
        Ok(server)
    }

    /// Makes programs run in `netns` with `ip netns exec` resolve names
    /// through `server` (`/etc/netns/<namespace>/resolv.conf`).
    pub fn resolve_through(&self, netns: &Netns, server: &DnsServer) -> anyhow::Result<()> {
        let dir = Path::new(NETNS_ETC).join(netns.name());
        make_dir(&dir, 0o755)?;
        let file = dir.join("resolv.conf");
        std::fs::write(
            &file,
            format!(
                "# the rig's DNS ({})\nnameserver {}\noptions timeout:1 attempts:2\n",
                self.prefix(),
                server.addr().ip()
            ),
        )
        .with_context(|| format!("writing {}", file.display()))
    }
}

impl DnsServer {
    /// Where it answers (port 53).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host.addr(), 53))
    }

    /// The key's name (`navette.`).
    pub fn key_name(&self) -> &str {
        KEY_NAME
    }

    /// The key's secret, base64.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The secret in a file of mode 0600.
    pub fn secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// The host it runs on.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// `kdig` from `from`, asking this server directly over TCP: the
    /// answer section's `(ttl, data)` for `name`/`rtype` (empty when there
    /// is none).
    pub fn query(
        &self,
        from: &Netns,
        name: &str,
        rtype: &str,
    ) -> anyhow::Result<Vec<(u32, String)>> {
        let out = run_checked(
            from.command("kdig")
                .arg(format!("@{}", self.host.addr()))
                .args([
                    "+tcp",
                    "+noall",
                    "+answer",
                    "+timeout=2",
                    "+retry=0",
                    name,
                    rtype,
                ]),
            &format!("kdig {name} {rtype}"),
        )?;
        let mut answers = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [owner, ttl, _class, kind, data @ ..] = fields.as_slice()
                && owner.trim_end_matches('.') == name.trim_end_matches('.')
                && kind.eq_ignore_ascii_case(rtype)
            {
                answers.push((ttl.parse().context("kdig's TTL")?, data.join(" ")));
            }
        }
        Ok(answers)
    }

    /// Runs an update with `knsupdate` from `from`, signed with the rig's
    /// key: `commands` are its `update ...` lines for `zone` (someone
    /// other than Navette changing a record).
    pub fn nsupdate(&self, from: &Netns, zone: &str, commands: &[&str]) -> anyhow::Result<()> {
        let mut script = format!("server {} 53\nzone {zone}\n", self.host.addr());
        for command in commands {
            script.push_str(command);
            script.push('\n');
        }
        script.push_str("send\nanswer\n");
        let out = run_with_input(
            from.command("knsupdate")
                .arg("-y")
                .arg(format!("hmac-sha256:{KEY_NAME}:{}", self.secret)),
            &script,
            "knsupdate",
        )?;
        if !out.contains("NOERROR") {
            bail!("knsupdate to zone {zone}: {out}");
        }
        Ok(())
    }
}

/// 32 random bytes, base64.
fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(base64(&bytes))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let word =
            chunk.iter().fold(0u32, |w, &b| (w << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((word >> (18 - 6 * index)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn chown_knot(path: &Path) -> anyhow::Result<()> {
    let owner = nix::unistd::User::from_name("knot")
        .context("looking up user knot")?
        .context("no system user knot: run tests/setup.sh")?;
    std::os::unix::fs::chown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
        .with_context(|| format!("chown knot {}", path.display()))
}
