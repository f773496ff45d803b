//! The IP rerouting scenario that `tests/tests/address_moves.rs` and the
//! benchmark (`navette-bench-addresses`) share: a dedicated server, a
//! transit host and a shared host enrolled with the real controller and
//! agents, behind the [`router`](crate::router) with the provider's
//! stand-in, a TCP service on every host, and the server holding two
//! addresses of each kind:
//!
//! | address | how it reaches the server |
//! |---|---|
//! | 198.51.100.10/24, 2001:db8:1::10/64 | shared layer 2 (the router's neighbour cache) |
//! | 203.0.113.130/32, 2001:db8:3::30/128 | routed by the provider to the server's main address |
//!
//! The server and the transit host are of one configuration class
//! ([`CLASS`]) and the server holds a transit allocation of the transit
//! host, asked for through the Transit API at setup: addresses move only
//! to the transit host of the server's active allocation.
//!
//! Owns: that setup, moving an address through the operator API
//! (`Addresses/MoveAddress` with grpcurl), which hosts hold an address,
//! and measuring the client's longest gap while addresses move.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::agent::{Agent, AgentKind, AgentSpec};
use crate::controller::{Controller, ControllerSpec};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::Rig;
use crate::router::{ProbeReport, Prober, Router, host_v6};

pub const LAYER2_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
pub const LAYER2_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10));
pub const ROUTED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 130));
pub const ROUTED_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x30));
/// The service the client connects to, on every host.
pub const SERVICE_PORT: u16 = 8080;
/// The configuration class of the server and of the transit host.
pub const CLASS: &str = "c8-m32-d960";
/// The stand-in's port on the router.
const PROVIDER_PORT: u16 = 8480;

/// How to set the scenario up.
#[derive(Clone, Debug, Default)]
pub struct ReroutingSpec {
    /// Test only: the transit host's agent does not announce the addresses
    /// it takes.
    pub transit_skips_announcements: bool,
    /// The stand-in's own delay before it changes the route.
    pub provider_delay_ms: u64,
}

/// The running scenario.
pub struct Rerouting {
    pub server: Netns,
    pub transit: Netns,
    pub shared: Netns,
    pub router: Router,
    pub controller: Controller,
    pub server_agent: Agent,
    pub transit_agent: Agent,
    pub shared_agent: Agent,
    /// The stand-in and the services (the rig kills them at teardown).
    pub processes: Vec<ChildProcess>,
    /// The server's transit allocation, active on the transit host.
    pub allocation_id: String,
}

/// The prefix length each scenario address is configured with.
pub fn prefix_length(address: IpAddr) -> u32 {
    match address {
        a if a == LAYER2_V4 => 24,
        a if a == LAYER2_V6 => 64,
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `REROUTE_MODE_LAYER2` for the layer 2 addresses, `REROUTE_MODE_ROUTED`
/// for the others.
pub fn mode_of(address: IpAddr) -> &'static str {
    if address == LAYER2_V4 || address == LAYER2_V6 {
        "REROUTE_MODE_LAYER2"
    } else {
        "REROUTE_MODE_ROUTED"
    }
}

impl Rig {
    /// Sets the scenario up (see the module doc).
    pub fn start_rerouting(&self, spec: &ReroutingSpec) -> anyhow::Result<Rerouting> {
        let ctl = self.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
        let server = self.add_namespace("ded-1", Ipv4Addr::new(192, 0, 2, 21))?;
        let transit = self.add_namespace("transit-1", Ipv4Addr::new(192, 0, 2, 31))?;
        let shared = self.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 41))?;
        let router = self.add_router(&[&server, &transit, &shared])?;
        let mut processes = Vec::new();
        let (provider_url, standin) =
            router.start_provider_standin(self, PROVIDER_PORT, spec.provider_delay_ms)?;
        processes.push(standin);
        let controller = self.start_controller(
            &ctl,
            ControllerSpec {
                extra_config: format!(
                    "\n[addresses]\ndefault_mode = \"layer2\"\n\n[addresses.provider]\nurl = \"{provider_url}\"\ntimeout_secs = 30\n"
                ),
                ..ControllerSpec::default()
            },
        )?;
        // The server's addresses, as its provider set it up.
        for address in [LAYER2_V4, LAYER2_V6, ROUTED_V4, ROUTED_V6] {
            let cidr = format!("{address}/{}", prefix_length(address));
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", "eth0"];
            if address.is_ipv6() {
                args.push("nodad");
            }
            server.ip(&args)?;
        }
        router.route(ROUTED_V4, IpAddr::V4(server.addr()))?;
        router.route(ROUTED_V6, IpAddr::V6(host_v6(&server)))?;
        for host in [&server, &transit, &shared] {
            processes.push(crate::router::start_tcp_service(self, host, SERVICE_PORT)?);
        }
        let enrol = |host: &Netns, kind: AgentKind, skip: bool| -> anyhow::Result<Agent> {
            let token = self.create_join_token(host.host(), kind)?;
            self.start_agent(
                host,
                AgentSpec {
                    kind,
                    token,
                    skip_address_announcements: skip,
                    ..AgentSpec::default()
                },
            )
        };
        let server_agent = enrol(&server, AgentKind::Dedicated, false)?;
        let transit_agent = enrol(
            &transit,
            AgentKind::Transit,
            spec.transit_skips_announcements,
        )?;
        let shared_agent = enrol(&shared, AgentKind::Shared, false)?;
        let mut scenario = Rerouting {
            server,
            transit,
            shared,
            router,
            controller,
            server_agent,
            transit_agent,
            shared_agent,
            processes,
            allocation_id: String::new(),
        };
        scenario.wait_reported(self)?;
        scenario.allocation_id = scenario.request_transit(self)?;
        Ok(scenario)
    }
}

impl Rerouting {
    /// Waits until the server's inventory lists its four addresses and the
    /// other hosts are online with an inventory.
    fn wait_reported(&self, rig: &Rig) -> anyhow::Result<()> {
        rig.wait_until(
            "the hosts online, the server reporting its addresses",
            Duration::from_secs(60),
            || {
                let answer = rig.grpcurl_json("navette.v1.Hosts/ListHosts", &json!({}))?;
                let hosts = answer
                    .get("hosts")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let online = |id: &str| {
                    hosts.iter().find(|h| {
                        h.get("id").and_then(Value::as_str) == Some(id)
                            && h.get("state").and_then(Value::as_str) == Some("HOST_STATE_ONLINE")
                            && h.get("inventoryUpdatedAt").is_some()
                    })
                };
                let server_ready = online(self.server.host()).is_some_and(|h| {
                    let listed: Vec<&str> = h
                        .get("addresses")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    [LAYER2_V4, LAYER2_V6, ROUTED_V4, ROUTED_V6]
                        .iter()
                        .all(|a| listed.contains(&a.to_string().as_str()))
                });
                Ok(server_ready
                    && online(self.transit.host()).is_some()
                    && online(self.shared.host()).is_some())
            },
        )
    }

    /// Gives the server and the transit host their class and asks for
    /// transit for the server (`Transit/RequestTransit`, as the panel
    /// would, here as the operator): the allocation's id, active on the
    /// transit host.
    fn request_transit(&self, rig: &Rig) -> anyhow::Result<String> {
        for host in [self.server.host(), self.transit.host()] {
            rig.grpcurl_json(
                "navette.v1.TransitPool/SetConfigurationClass",
                &json!({ "host_id": host, "configuration_class": CLASS }),
            )?;
        }
        let allocation = rig.grpcurl_json(
            "navette.v1.Transit/RequestTransit",
            &json!({
                "request_id": crate::grpcurl::request_id(),
                "server_host_id": self.server.host(),
                "price": {"minor_units": "2999", "period": "PRICE_PERIOD_MONTH", "currency": "EUR"},
            }),
        )?;
        let field = |name: &str| {
            allocation
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        anyhow::ensure!(
            field("state") == "STATE_ACTIVE" && field("transitHostId") == self.transit.host(),
            "the server's transit allocation is active on {}: {allocation}",
            self.transit.host()
        );
        Ok(field("id"))
    }

    /// `Transit/ReleaseTransit` of the server's allocation: the answer, or
    /// grpcurl's output when refused.
    pub fn release_transit(&self, rig: &Rig) -> anyhow::Result<std::process::Output> {
        rig.grpcurl(&[
            "-d",
            &json!({ "id": self.allocation_id }).to_string(),
            &rig.controller_access()?.api.to_string(),
            "navette.v1.Transit/ReleaseTransit",
        ])
    }

    /// `Addresses/MoveAddress` as the operator; the answer, or grpcurl's
    /// error.
    pub fn move_address(&self, rig: &Rig, address: IpAddr, to: &str) -> anyhow::Result<Value> {
        rig.grpcurl_json(
            "navette.v1.Addresses/MoveAddress",
            &self.move_request(address, to),
        )
    }

    /// The request [`Rerouting::move_address`] sends.
    pub fn move_request(&self, address: IpAddr, to: &str) -> Value {
        json!({
            "serverId": self.server.host(),
            "address": address.to_string(),
            "toHostId": to,
            "mode": mode_of(address),
            "prefixLength": prefix_length(address),
        })
    }

    /// `Addresses/ListServerAddresses` of the server.
    pub fn list_addresses(&self, rig: &Rig) -> anyhow::Result<Value> {
        rig.grpcurl_json(
            "navette.v1.Addresses/ListServerAddresses",
            &json!({ "serverId": self.server.host() }),
        )
    }

    /// The hosts (of server, transit, shared) whose eth0 holds `address`.
    pub fn holders(&self, address: IpAddr) -> anyhow::Result<Vec<String>> {
        let mut holders = Vec::new();
        for host in [&self.server, &self.transit, &self.shared] {
            let listed = host.ip(&["-o", "addr", "show", "dev", "eth0"])?;
            if listed.contains(&format!(" {address}/")) {
                holders.push(host.host().to_owned());
            }
        }
        Ok(holders)
    }

    /// Moves each of `addresses` in turn to `to` while the internet client
    /// connects to every one of them in a loop; what the client saw of
    /// each, and each move's answer.
    pub fn measure_moves(
        &self,
        rig: &Rig,
        addresses: &[IpAddr],
        to: &str,
    ) -> anyhow::Result<Vec<(ProbeReport, Value)>> {
        let probers = addresses
            .iter()
            .map(|a| Prober::start(self.router.internet(), SocketAddr::new(*a, SERVICE_PORT)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for prober in &probers {
            prober
                .wait_successes(20, Duration::from_secs(10))
                .context("the address answers before the move")?;
        }
        let mut answers = Vec::new();
        for address in addresses {
            answers.push(self.move_address(rig, *address, to)?);
        }
        // Long enough for any gap to close (the bound is one second).
        std::thread::sleep(Duration::from_millis(1500));
        let mut seen = Vec::new();
        for (prober, answer) in probers.into_iter().zip(answers) {
            seen.push((prober.stop()?, answer));
        }
        Ok(seen)
    }
}
