//! The internet side of the rig, for IP rerouting: a router between the
//! hosts' bridge and a client that stands for the internet, the
//! provider's failover API stand-in, a TCP service on the hosts and a
//! client connecting to it in a loop that measures how long it could not.
//!
//! ```text
//!   hosts (bridge, 192.0.2.0/24, 2001:db8::/64)          router <prefix>-rtr          <prefix>-inet
//!   shared layer 2 addresses 198.51.100.0/24, 2001:db8:1::/64 ── eth0 ─┤├─ wan ── 203.0.113.2, 2001:db8:2::2
//!   routed failover addresses 203.0.113.128/25, 2001:db8:3::/64 (routes on the router)
//! ```
//!
//! On shared layer 2 the router reaches the addresses through its own
//! neighbour cache, which is what an announcement updates; routed
//! addresses have a route on the router to a host's main address, which
//! is what the stand-in changes (`tests/rig/provider_standin.py`, the
//! shape of Hetzner's failover call, with a configurable delay).
//!
//! Owns: the router and client namespaces' links, addresses and routes,
//! the hosts' IPv6 main addresses and routes back to the client, and the
//! stand-in process. Must not know Navette: tests move addresses through
//! the operator API.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::CloneFlags;

use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::Rig;

/// The router's address on the hosts' bridge.
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 253);
/// The router's IPv6 address on the bridge.
pub const ROUTER_LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x253);
/// The internet client's addresses.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// The router and the internet client.
#[derive(Clone, Debug)]
pub struct Router {
    router: Netns,
    internet: Netns,
}

impl Rig {
    /// Adds the router (on the bridge at 192.0.2.253) and the internet
    /// client behind it, and gives each of `hosts` an IPv6 main address
    /// (`2001:db8::<last octet>`) and routes back to the client.
    pub fn add_router(&self, hosts: &[&Netns]) -> anyhow::Result<Router> {
        let router = self.add_namespace("rtr", ROUTER_LAN)?;
        // A namespace of the rig (torn down with it), taken off the bridge:
        // it reaches the hosts only through the router.
        let internet = self.add_namespace("inet", Ipv4Addr::new(192, 0, 2, 252))?;
        internet.ip(&["link", "del", "eth0"])?;
        // Interface names are per namespace: neither end is on the switch.
        router.ip(&[
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            internet.name(),
        ])?;
        for (netns, device, addresses) in [
            (
                &router,
                "eth0",
                &["198.51.100.1/24", "2001:db8::253/64", "2001:db8:1::1/64"][..],
            ),
            (&router, "wan", &["203.0.113.1/25", "2001:db8:2::1/64"][..]),
            (
                &internet,
                "eth0",
                &["203.0.113.2/25", "2001:db8:2::2/64"][..],
            ),
        ] {
            for address in addresses {
                let mut args = vec!["addr", "add", address, "dev", device];
                if address.contains(':') {
                    args.push("nodad");
                }
                netns.ip(&args)?;
            }
            netns.ip(&["link", "set", device, "up"])?;
        }
        internet.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        internet.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
        sysctl(
            &router,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        for host in hosts {
            let v6 = format!("{}/64", host_v6(host));
            host.ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])?;
            host.ip(&["route", "add", "203.0.113.0/25", "via", "192.0.2.253"])?;
            host.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                "2001:db8::253",
            ])?;
        }
        Ok(Router { router, internet })
    }
}

/// A host's IPv6 main address: `2001:db8::<last octet of its IPv4>`
/// (written in hex digits that read as the decimal octet).
pub fn host_v6(host: &Netns) -> Ipv6Addr {
    let last = u16::from(host.addr().octets()[3]);
    let readable = (last / 100) << 8 | ((last / 10) % 10) << 4 | (last % 10);
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, readable)
}

fn sysctl(netns: &Netns, settings: &[&str]) -> anyhow::Result<()> {
    let mut command = netns.command("sysctl");
    command.arg("-qw").args(settings);
    crate::install::run_checked(&mut command, &format!("sysctl in {}", netns.name())).map(drop)
}

impl Router {
    pub fn netns(&self) -> &Netns {
        &self.router
    }

    /// The client standing for the internet.
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    /// Routes `address` (a routed failover address) to `via`, as the
    /// provider had it before any move.
    pub fn route(&self, address: IpAddr, via: IpAddr) -> anyhow::Result<()> {
        let (family, prefix) = if address.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let destination = format!("{address}/{prefix}");
        self.router
            .ip(&[
                family,
                "route",
                "replace",
                &destination,
                "via",
                &via.to_string(),
            ])
            .map(drop)
    }

    /// Where the router sends `address` now (`ip route get`), for checks.
    pub fn route_of(&self, address: IpAddr) -> anyhow::Result<String> {
        self.router.ip(&["route", "get", &address.to_string()])
    }

    /// Keeps neighbour entries on the bridge side REACHABLE for a long time
    /// (`base_reachable_time_ms`), so that without an announcement the
    /// router keeps sending to the host it learnt first: the deterministic
    /// form of "the entry must time out". Flushes the current entries.
    pub fn hold_neighbours(&self, millis: u64) -> anyhow::Result<()> {
        let v4 = format!("net.ipv4.neigh.eth0.base_reachable_time_ms={millis}");
        let v6 = format!("net.ipv6.neigh.eth0.base_reachable_time_ms={millis}");
        sysctl(&self.router, &[&v4, &v6])?;
        self.router.ip(&["neigh", "flush", "dev", "eth0"]).map(drop)
    }

    /// Starts the provider's failover API stand-in on the router
    /// (`http://192.0.2.253:<port>`), which changes the router's routes
    /// after `delay_ms`.
    pub fn start_provider_standin(
        &self,
        rig: &Rig,
        port: u16,
        delay_ms: u64,
    ) -> anyhow::Result<(String, ChildProcess)> {
        let script = crate::install::workspace_dir().join("tests/rig/provider_standin.py");
        let router = self.router.clone();
        let listen = SocketAddrV4::new(ROUTER_LAN, port);
        let process = rig.spawn(&self.router, "provider", move || {
            let mut command = router.command("python3");
            command
                .arg(&script)
                .args(["--listen", &listen.to_string()])
                .args(["--delay-ms", &delay_ms.to_string()]);
            command
        })?;
        crate::controller::wait_listening(&self.router, &process, &[listen])?;
        Ok((format!("http://{listen}"), process))
    }
}

/// Starts a TCP service on `port` of every address of `host` (IPv4 and
/// IPv6, addresses added later included): it accepts and closes.
pub fn start_tcp_service(rig: &Rig, host: &Netns, port: u16) -> anyhow::Result<ChildProcess> {
    let program = format!(
        "import socket\n\
         s = socket.create_server(('::', {port}), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)\n\
         while True:\n    c, _ = s.accept()\n    c.close()\n"
    );
    let netns = host.clone();
    let process = rig.spawn(host, "tcp-service", move || {
        let mut command = netns.command("python3");
        command.args(["-c", &program]);
        command
    })?;
    crate::controller::wait_listening(host, &process, &[SocketAddrV4::new(host.addr(), port)])?;
    Ok(process)
}

/// What a [`Prober`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The longest time without a successful connection, from the end of
    /// one success to the start of the next, counted only when an attempt
    /// failed in between (0: none failed), or to the end of watching when
    /// it never came back (see `still_failing`).
    pub longest_gap: Duration,
    pub successes: u64,
    pub failures: u64,
    /// The last attempts failed: the address had not come back.
    pub still_failing: bool,
    /// The longest time between two successful connections, whether or not
    /// one failed in between: the client's sampling interval.
    pub longest_between_successes: Duration,
}

/// A client opening TCP connections in a loop from a namespace, every
/// couple of milliseconds, each given up after 50 ms.
pub struct Prober {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<ProbeReport>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// How long one connection attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(50);

impl Prober {
    /// Starts connecting to `target` from inside `from`.
    pub fn start(from: &Netns, target: SocketAddr) -> anyhow::Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ProbeReport::default()));
        let path = Path::new("/run/netns").join(from.name());
        let (stop_flag, shared) = (stop.clone(), report.clone());
        let thread = std::thread::Builder::new()
            .name(format!("probe-{target}"))
            .spawn(move || -> anyhow::Result<()> {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .context("entering the client's namespace")?;
                let mut last_success_end: Option<Instant> = None;
                let mut failing_since_success = false;
                while !stop_flag.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let connected = std::net::TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT);
                    let ended = Instant::now();
                    let mut report = crate::rig::lock(&shared);
                    match connected {
                        Ok(_) => {
                            report.successes += 1;
                            if let Some(last) = last_success_end {
                                report.longest_between_successes =
                                    report.longest_between_successes.max(began - last);
                            }
                            if let (true, Some(last)) = (failing_since_success, last_success_end) {
                                report.longest_gap = report.longest_gap.max(began - last);
                            }
                            failing_since_success = false;
                            last_success_end = Some(ended);
                            report.still_failing = false;
                        }
                        Err(_) => {
                            report.failures += 1;
                            failing_since_success = true;
                            report.still_failing = true;
                            if let Some(last) = last_success_end {
                                report.longest_gap = report.longest_gap.max(ended - last);
                            }
                        }
                    }
                    drop(report);
                    // A failed attempt already waited; a success waits a
                    // little so that the service is not flooded.
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(())
            })
            .context("spawning the prober")?;
        Ok(Prober {
            stop,
            report,
            thread: Some(thread),
        })
    }

    /// What it saw so far.
    pub fn report(&self) -> ProbeReport {
        *crate::rig::lock(&self.report)
    }

    /// Waits until at least `count` connections succeeded (the address
    /// answers), for at most `timeout`.
    pub fn wait_successes(&self, count: u64, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_until("the client connecting", timeout, || {
            Ok(self.report().successes >= count)
        })
    }

    /// Stops and returns what it saw.
    pub fn stop(mut self) -> anyhow::Result<ProbeReport> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(self.report())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
