//! What the file-transfer tests share: a throwaway CA and certificates, a
//! real `FileSource` server on 127.0.0.1 behind mutual TLS and the role
//! gate, a TCP relay whose link can be cut, source trees with every kind of
//! entry, the `rsync` comparison, and a hostile source ([`hostile`]).
#![allow(dead_code)]

pub mod hostile;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, ensure};
use navette_agent::transfer::files::setid::AccountUser;
use navette_agent::transfer::files::{FileSourceService, PullConfig};
use navette_agent::transfer::grants::{Grant, Grants};
use navette_proto::gate::{self, RoleGateLayer};
use navette_proto::identity::Role;
use navette_proto::tls::{self, ClientAuth, Identity, ReloadableServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::Channel;

/// The source's host id, and the target's.
pub const SOURCE_HOST: &str = "source-1";
pub const TARGET_HOST: &str = "test-1";
/// A real user and group the trees are owned by (made if missing, never
/// removed: other tests may use them at the same time).
pub const USER: &str = "nvfiles_u1";
pub const GROUP: &str = "nvfiles_g1";

/// A throwaway CA.
pub struct Pki {
    ca_pem: String,
    ca_key: KeyPair,
    pub roots: Arc<rustls::RootCertStore>,
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        tls::install_crypto_provider();
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "files test CA");
        let ca_pem = params.self_signed(&ca_key)?.pem();
        let roots = tls::ca_roots(&ca_pem, "test CA")?;
        Ok(Pki {
            ca_pem,
            ca_key,
            roots,
        })
    }

    /// A certificate for `role`, with `dns` as a DNS name if given.
    pub fn identity(&self, role: &Role, dns: Option<&str>) -> anyhow::Result<Identity> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, role.to_string());
        params
            .subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
        if let Some(dns) = dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into()?));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity::from_pem(
            &cert.pem(),
            &key.serialize_pem(),
            "test",
        )?)
    }

    /// A channel to `address` as the agent of `host`, verifying the source.
    pub fn channel_as(&self, host: &str, address: SocketAddr) -> anyhow::Result<Channel> {
        let identity = self.identity(
            &Role::Agent {
                host_id: host.to_owned(),
            },
            None,
        )?;
        let config = tls::client_config(self.roots.clone(), Some(identity))?;
        Ok(tls::channel(
            address,
            &navette_proto::identity::agent_server_name(SOURCE_HOST),
            config,
        )?)
    }
}

/// Agents may call `FileSource` and `FileChanges`; nothing else is served.
fn policy(path: &str, role: &Role) -> Result<(), String> {
    match (gate::service_of(path), role) {
        ("navette.v1.FileSource" | "navette.v1.FileChanges", Role::Agent { .. }) => Ok(()),
        (service, role) => Err(format!("{service} is not served to {role}")),
    }
}

/// A gRPC server on 127.0.0.1, stopped on drop.
pub struct Server {
    pub address: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `routes` as host [`SOURCE_HOST`], over mutual TLS and the role
/// gate, as an agent does.
pub async fn serve(pki: &Pki, routes: tonic::service::Routes) -> anyhow::Result<Server> {
    let identity = pki.identity(
        &Role::Agent {
            host_id: SOURCE_HOST.to_owned(),
        },
        Some(&navette_proto::identity::agent_server_name(SOURCE_HOST)),
    )?;
    let config = tls::server_config(pki.roots.clone(), identity, ClientAuth::Required)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tls::incoming(listener, ReloadableServerConfig::new(config), "files-test");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let policy: gate::Policy = Arc::new(policy);
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .layer(RoleGateLayer::new(policy))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = result {
            eprintln!("test server: {error}");
        }
    });
    Ok(Server {
        address,
        _stop: stop,
    })
}

/// The real source service over `grants`.
pub async fn serve_source(pki: &Pki, grants: Arc<Grants>) -> anyhow::Result<Server> {
    serve(
        pki,
        tonic::service::Routes::new(FileSourceService::new(grants).into_server()),
    )
    .await
}

/// Grants `home` to [`TARGET_HOST`] for `transfer_id`, in `state_dir`.
pub fn grant(state_dir: &Path, transfer_id: &str, home: &Path) -> anyhow::Result<Arc<Grants>> {
    let grants = Grants::open(state_dir)?;
    grants.insert(Grant {
        transfer_id: transfer_id.to_owned(),
        account: "alice".to_owned(),
        target_host_id: TARGET_HOST.to_owned(),
        home: Some(home.to_path_buf()),
        postgresql: vec![],
        mariadb: vec![],
        protocol_version: 0,
    })?;
    Ok(Arc::new(grants))
}

/// A TCP relay in front of a server: [`Relay::cut`] drops every
/// connection and refuses new ones until [`Relay::restore`], as a link
/// going down would.
pub struct Relay {
    pub address: SocketAddr,
    cuts: watch::Sender<u64>,
    down: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            address,
            cuts: cuts.clone(),
            down: down.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(relay)
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// A scratch directory under /tmp, emptied first and removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("navette-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn join(&self, path: &str) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Makes the test user and group unless they exist.
///
/// Tests of one binary run as threads and the rig's tests as processes:
/// concurrent `useradd` calls rewrite /etc/passwd over each other (a user
/// made twice, with two uids), so the check and the creation run under a
/// lock of this process and the rig's machine-wide lock file.
pub fn ensure_user() -> anyhow::Result<(u32, u32)> {
    use nix::fcntl::{Flock, FlockArg};
    use nix::unistd::{Group, User};
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/navette-rig.lock")
        .context("opening /run/navette-rig.lock")?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking /run/navette-rig.lock: {errno}"))?;
    if Group::from_name(GROUP)?.is_none() {
        let _ = Command::new("groupadd").args(["--system", GROUP]).status();
    }
    if User::from_name(USER)?.is_none() {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status();
    }
    let user = User::from_name(USER)?.context("test user")?;
    let group = Group::from_name(GROUP)?.context("test group")?;
    Ok((user.uid.as_raw(), group.gid.as_raw()))
}

/// The primary group of [`USER`] (its own group, made with it).
pub fn user_primary_gid() -> anyhow::Result<u32> {
    ensure_user()?;
    let user = nix::unistd::User::from_name(USER)?.context("test user")?;
    Ok(user.gid.as_raw())
}

/// The pull configuration for a copy of [`USER`]'s account: its own
/// entries may keep set-user-id and set-group-id bits.
pub fn account_config() -> PullConfig {
    PullConfig {
        account_user: AccountUser::Named(USER.to_owned()),
        ..PullConfig::default()
    }
}

/// Deterministic bytes that do not compress or repeat by block.
pub fn pseudo_random(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(length);
    out
}

pub fn set_mtime(path: &Path, seconds: i64, nanoseconds: i64) -> anyhow::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(seconds, nanoseconds),
        &TimeSpec::new(seconds, nanoseconds),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// How many small files [`build_tree`] makes under `many/`.
pub const MANY: usize = 300;

/// Fills `home` with every kind of entry a home can hold.
pub fn build_tree(home: &Path) -> anyhow::Result<()> {
    let (uid, gid) = ensure_user()?;
    std::fs::create_dir_all(home)?;
    let mk = |p: &str| std::fs::create_dir_all(home.join(p));
    mk("www/cgi")?;
    mk("data")?;
    mk("many")?;
    mk("setgid")?;
    mk("sticky")?;
    mk("shared")?;
    std::fs::write(home.join("www/index.html"), b"<h1>hello</h1>\n")?;
    std::fs::write(home.join("www/cgi/run.sh"), b"#!/bin/sh\necho hi\n")?;
    chmod(&home.join("www/cgi/run.sh"), 0o755)?;
    std::fs::write(home.join("secret.txt"), b"private\n")?;
    chmod(&home.join("secret.txt"), 0o600)?;
    chmod(&home.join("setgid"), 0o2775)?;
    chmod(&home.join("sticky"), 0o1777)?;
    std::fs::write(home.join("setuid-tool"), b"not really a program\n")?;
    chmod(&home.join("setuid-tool"), 0o4755)?;
    std::fs::write(home.join("empty"), b"")?;
    // Links: relative, absolute, dangling; hard links within and across
    // directories.
    std::os::unix::fs::symlink("cgi", home.join("www/current"))?;
    std::os::unix::fs::symlink("/etc/hostname", home.join("absolute-link"))?;
    std::os::unix::fs::symlink("nowhere/at/all", home.join("dangling"))?;
    std::fs::write(home.join("data/a.txt"), b"shared inode\n")?;
    std::fs::hard_link(home.join("data/a.txt"), home.join("data/b.txt"))?;
    std::fs::hard_link(home.join("data/a.txt"), home.join("www/a-again.txt"))?;
    // Names that are not UTF-8.
    let odd = home.join(OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&odd, b"latin-1 name\n")?;
    let odd_dir = home.join(OsStr::from_bytes(b"r\xe9pertoire"));
    std::fs::create_dir_all(&odd_dir)?;
    std::fs::write(odd_dir.join(OsStr::from_bytes(b"\xff\xfe")), b"x")?;
    // A fifo and a socket.
    nix::unistd::mkfifo(
        &home.join("pipe"),
        nix::sys::stat::Mode::from_bits_retain(0o640),
    )?;
    drop(std::os::unix::net::UnixListener::bind(home.join("socket"))?);
    // Extended attributes and ACLs.
    set_xattr(&home.join("www/index.html"), "user.comment", b"hello")?;
    set_xattr(&home.join("data"), "user.dir-note", b"\x00\xff\x10")?;
    run(Command::new("setfacl")
        .args(["-m", &format!("u:{USER}:rw,g:{GROUP}:r")])
        .arg(home.join("secret.txt")))?;
    run(Command::new("setfacl")
        .args(["-d", "-m", &format!("u:{USER}:rwx,g:{GROUP}:rx")])
        .arg(home.join("shared")))?;
    std::fs::write(home.join("shared/inherits.txt"), b"default ACL applies\n")?;
    // A sparse file: 100 MB, two small data extents.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(home.join("disk.img"))?;
        file.set_len(100 * 1024 * 1024)?;
        file.write_all_at(&pseudo_random(7, 64 * 1024), 0)?;
        file.write_all_at(&pseudo_random(8, 64 * 1024), 50 * 1024 * 1024)?;
    }
    // A larger file, and many small ones.
    std::fs::write(
        home.join("data/big.bin"),
        pseudo_random(1, 20 * 1024 * 1024),
    )?;
    for i in 0..MANY {
        let name = home.join(format!("many/{i:04}.txt"));
        std::fs::write(
            &name,
            pseudo_random(1000 + i as u64, 100 + (i * 37) % 20_000),
        )?;
    }
    // Owners. The set-id entries are the account's own (its user, its
    // group), so the target keeps their bits.
    let own_gid = user_primary_gid()?;
    for path in ["setgid", "setuid-tool"] {
        nix::unistd::chown(
            &home.join(path),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(own_gid)),
        )?;
    }
    chmod(&home.join("setgid"), 0o2775)?;
    chmod(&home.join("setuid-tool"), 0o4755)?;
    for path in [
        "www",
        "www/index.html",
        "www/cgi",
        "www/cgi/run.sh",
        "secret.txt",
        "shared",
    ] {
        nix::unistd::chown(
            &home.join(path),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &home.join("www/current"),
        Some(nix::unistd::Uid::from_raw(uid)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    // Times, with nanoseconds, on files, links and directories (last).
    set_mtime(&home.join("www/index.html"), 978_307_200, 123_456_789)?;
    set_mtime(&home.join("www/current"), 1_000_000_000, 5)?;
    set_mtime(&home.join("www/cgi"), 1_100_000_000, 0)?;
    set_mtime(&home.join("www"), 1_200_000_000, 42)?;
    Ok(())
}

/// Sets an extended attribute on a file or directory.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)?;
    rustix::fs::fsetxattr(&file, name, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// What `rsync -aHAX --delete --dry-run --itemize-changes` would change
/// to make `target` like `source` (empty: identical).
pub fn rsync_differences(source: &Path, target: &Path) -> anyhow::Result<String> {
    let mut from = source.as_os_str().to_owned();
    from.push("/");
    let mut to = target.as_os_str().to_owned();
    to.push("/");
    run(Command::new("rsync")
        .args([
            "-aHAX",
            "--delete",
            "--dry-run",
            "--itemize-changes",
            "--numeric-ids",
        ])
        .arg(from)
        .arg(to))
}

/// Every file and directory below `root`, for "nothing was written here".
pub fn listing(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
