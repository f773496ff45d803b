//! `navette-bench-addresses`: how long a moved address is unreachable as
//! a client on the internet sees it, IPv4 and IPv6, shared layer 2 and
//! routed, against the customer documentation's "about a minute" without
//! the server's IPs. Figures, not a pass/fail test: see docs/BENCHMARKS.md
//! ("Rerouting a server's addresses") for the latest output.
//!
//! The rig's rerouting scenario (`navette_tests::rerouting`): each round
//! moves the server's four addresses to the transit host and back through
//! the operator API (`Addresses/MoveAddress`), while the client connects to
//! each in a loop (a connection every ~2 ms, 50 ms per attempt); the
//! longest gap per move is kept, and the median and max printed per family
//! and mode, with the client's sampling interval (the longest time between
//! two successful connections, gap or not). The stand-in's own routing
//! delay and its call's duration are reported beside the routed figures:
//! the move is make-before-break, so the old host keeps answering while the
//! provider switches the route, and the delay is not a gap.
//!
//! Options (environment): NAVETTE_ADDRESS_BENCH_ROUNDS (5: 10 moves per
//! address), NAVETTE_ADDRESS_BENCH_PROVIDER_DELAY_MS (0), NAVETTE_BIN_DIR
//! (binaries to run; default target/debug, as tests/bench-addresses.sh
//! builds).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use navette_tests::Rig;
use navette_tests::rerouting::{LAYER2_V4, LAYER2_V6, ROUTED_V4, ROUTED_V6, ReroutingSpec};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let rounds = env_u64("NAVETTE_ADDRESS_BENCH_ROUNDS", 5).max(1);
    let delay_ms = env_u64("NAVETTE_ADDRESS_BENCH_PROVIDER_DELAY_MS", 0);
    let rig = Rig::new("bench_addresses")?;
    let scenario = rig.start_rerouting(&ReroutingSpec {
        transit_skips_announcements: false,
        provider_delay_ms: delay_ms,
    })?;
    let (server, transit) = (
        scenario.server.host().to_owned(),
        scenario.transit.host().to_owned(),
    );
    let groups: [(&str, [IpAddr; 2]); 2] = [
        ("layer 2", [LAYER2_V4, LAYER2_V6]),
        ("routed", [ROUTED_V4, ROUTED_V6]),
    ];
    let mut gaps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut provider: Vec<u64> = Vec::new();
    let mut sampling = Duration::ZERO;
    for round in 1..=rounds {
        for to in [&transit, &server] {
            for (mode, addresses) in &groups {
                for (address, (seen, answer)) in addresses
                    .iter()
                    .zip(scenario.measure_moves(&rig, addresses, to)?)
                {
                    let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
                    let provider_ms = answer
                        .get("move")
                        .and_then(|m| m.get("providerMs"))
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    sampling = sampling.max(seen.longest_between_successes);
                    println!(
                        "round {round}: {mode} {family} {address} to {to}: gap {:.1} ms{}",
                        ms(seen.longest_gap),
                        if *mode == "routed" {
                            format!(" (provider call {provider_ms} ms)")
                        } else {
                            String::new()
                        }
                    );
                    if *mode == "routed" {
                        provider.push(provider_ms);
                    }
                    gaps.entry(format!("{mode} {family}"))
                        .or_default()
                        .push(seen.longest_gap);
                }
            }
        }
    }
    println!();
    println!(
        "unreachability seen by the client, {} moves each (to the transit host and back, {rounds} rounds); the customer documentation says \"about a minute\"",
        2 * rounds
    );
    println!("| mode, family | median (ms) | max (ms) |");
    println!("|---|---|---|");
    for (name, mut measured) in gaps {
        measured.sort();
        let median = measured[measured.len() / 2];
        let max = measured[measured.len() - 1];
        println!("| {name} | {:.1} | {:.1} |", ms(median), ms(max));
    }
    println!(
        "the client's longest interval between two successful connections: {:.1} ms (0 above: no connection failed)",
        ms(sampling)
    );
    provider.sort_unstable();
    if let Some(median) = provider.get(provider.len() / 2) {
        println!(
            "provider stand-in: its own delay {delay_ms} ms; its call took {median} ms (median), {} ms (max)",
            provider.last().copied().unwrap_or(0)
        );
    }
    Ok(())
}
