//! The transit pool (R9) through real controllers, agents and grpcurl:
//! two dedicated servers of one configuration class ask for transit at the
//! same moment, through two controllers sharing one database, with one
//! transit host of their class in the pool; one gets
//! it, the other waits with position 1 and gets it when the first releases
//! it, while a VPS of another class is never given it. The release is
//! refused, naming what is left, while the transit host holds an account
//! (and while it holds addresses of the server: `address_moves.rs`, with
//! real moves); the wipe that follows removes the copy named after the
//! allocation and leaves a test's copy alone. Every host shows its
//! configuration class (`Host.configuration_class`).

mod support;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, Rig};
use serde_json::{Value, json};
use support::{enrol, expect_refusal, list, str_of};

const CLASS: &str = "c8-m32-d960";
const OTHER_CLASS: &str = "c4-m8-d160";

/// `Transit/<method>` as the control panel.
fn transit(rig: &Rig, method: &str, request: &Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Transit/{method}"),
        request,
    )
}

/// `Transit/<method>` as the panel, expected to fail: grpcurl's output.
fn transit_refused(
    rig: &Rig,
    method: &str,
    request: &Value,
) -> anyhow::Result<std::process::Output> {
    let access = rig.controller_access()?;
    let api = access.api.to_string();
    let body = request.to_string();
    rig.grpcurl_as(
        &access.panel,
        &["-d", &body, &api, &format!("navette.v1.Transit/{method}")],
    )
}

fn set_class(rig: &Rig, host: &str, class: &str) -> anyhow::Result<Value> {
    rig.grpcurl_json(
        "navette.v1.TransitPool/SetConfigurationClass",
        &json!({"host_id": host, "configuration_class": class}),
    )
}

fn request_transit(rig: &Rig, server: &str, price: Value) -> anyhow::Result<Value> {
    let api = rig.controller_access()?.api.to_string();
    request_transit_at(rig, &api, server, price)
}

/// `Transit/RequestTransit` as the panel, sent to the controller at `api`.
fn request_transit_at(rig: &Rig, api: &str, server: &str, price: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    let body = json!({
        "request_id": navette_tests::grpcurl::request_id(),
        "server_host_id": server,
        "price": price,
    })
    .to_string();
    let output = rig.grpcurl_as(
        &access.panel,
        &["-d", &body, api, "navette.v1.Transit/RequestTransit"],
    )?;
    ensure!(
        output.status.success(),
        "RequestTransit for {server} at {api}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn get(rig: &Rig, id: &str) -> anyhow::Result<Value> {
    transit(rig, "GetTransitAllocation", &json!({"id": id}))
}

/// A copy record such as a copy onto the host writes (`transfer/copies.rs`),
/// with a home and nothing else.
fn plant_copy(
    state_dir: &Path,
    accounts_dir: &Path,
    copy_id: &str,
    account: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let home = accounts_dir.join(format!("{account}.{copy_id}"));
    std::fs::create_dir_all(home.join("www"))?;
    std::fs::write(home.join("www/index.html"), "copied\n")?;
    let copies = state_dir.join("copies");
    std::fs::create_dir_all(&copies)?;
    let record = json!({"copy_id": copy_id, "account": account, "home": home});
    std::fs::write(copies.join(format!("{copy_id}.json")), record.to_string())?;
    Ok(home)
}

#[test]
fn two_servers_share_one_transit_host_in_turn() -> anyhow::Result<()> {
    let rig = Rig::new("transit_pool")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    // A second controller sharing the database: the two requests below go
    // one to each, as they would with controllers run for availability.
    let second_controller = controller.start_second(&rig, 7543, 7544)?;
    let first_api = controller.access().api.to_string();
    let second_api = second_controller.access().api.to_string();
    let first = rig.add_namespace("dedicated-1", Ipv4Addr::new(192, 0, 2, 21))?;
    let second = rig.add_namespace("dedicated-2", Ipv4Addr::new(192, 0, 2, 22))?;
    let vps = rig.add_namespace("vps-3", Ipv4Addr::new(192, 0, 2, 23))?;
    let pool = rig.add_namespace("transit-1", Ipv4Addr::new(192, 0, 2, 31))?;
    let _first = enrol(&rig, &first, AgentKind::Dedicated, "2024.1")?;
    let _second = enrol(&rig, &second, AgentKind::Dedicated, "2024.1")?;
    let _vps = enrol(&rig, &vps, AgentKind::Vps, "2024.1")?;
    let transit_agent = enrol(&rig, &pool, AgentKind::Transit, "2026.1")?;
    let drained = rig.add_namespace("transit-2", Ipv4Addr::new(192, 0, 2, 32))?;
    let _drained = enrol(&rig, &drained, AgentKind::Transit, "2026.1")?;
    support::wait_online_with_inventory(
        &rig,
        &[
            "dedicated-1",
            "dedicated-2",
            "vps-3",
            "transit-1",
            "transit-2",
        ],
    )?;

    // Without a class, a server cannot ask.
    let classless = transit_refused(
        &rig,
        "RequestTransit",
        &json!({
            "request_id": navette_tests::grpcurl::request_id(),
            "server_host_id": "dedicated-1",
            "price": {"minor_units": "2999", "period": "PRICE_PERIOD_MONTH", "currency": "EUR"},
        }),
    )?;
    expect_refusal(&classless, "FailedPrecondition", "no configuration class")?;
    // Only operators say what class a host is.
    let access = rig.controller_access()?;
    let api = access.api.to_string();
    let by_panel = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &json!({"host_id": "transit-1", "configuration_class": CLASS}).to_string(),
            &api,
            "navette.v1.TransitPool/SetConfigurationClass",
        ],
    )?;
    expect_refusal(&by_panel, "PermissionDenied", "operator API")?;
    for host in ["dedicated-1", "dedicated-2", "transit-1"] {
        set_class(&rig, host, CLASS)?;
    }
    set_class(&rig, "vps-3", OTHER_CLASS)?;
    for (host, class) in [("transit-1", CLASS), ("vps-3", OTHER_CLASS)] {
        let shown = support::host(&rig, host)?;
        ensure!(
            str_of(&shown, "configurationClass") == class,
            "Hosts shows {host}'s class {class}: {shown}"
        );
    }
    // The other class's transit host is draining: it serves no one.
    rig.grpcurl_json("navette.v1.Hosts/DrainHost", &json!({"id": "transit-2"}))?;
    set_class(&rig, "transit-2", OTHER_CLASS)?;

    // Both dedicated servers ask at the same moment, each through its own
    // controller.
    let monthly = json!({"minor_units": "2999", "period": "PRICE_PERIOD_MONTH", "currency": "EUR"});
    let daily = json!({"minor_units": "150", "period": "PRICE_PERIOD_DAY", "currency": "EUR"});
    let (one, two) = std::thread::scope(|scope| {
        let one =
            scope.spawn(|| request_transit_at(&rig, &first_api, "dedicated-1", monthly.clone()));
        let two =
            scope.spawn(|| request_transit_at(&rig, &second_api, "dedicated-2", daily.clone()));
        (one.join(), two.join())
    });
    let one = one.map_err(|_| anyhow::anyhow!("request of dedicated-1 panicked"))??;
    let two = two.map_err(|_| anyhow::anyhow!("request of dedicated-2 panicked"))??;
    let (served, waiting) = match (str_of(&one, "state"), str_of(&two, "state")) {
        ("STATE_ACTIVE", "STATE_WAITING") => (one, two),
        ("STATE_WAITING", "STATE_ACTIVE") => (two, one),
        (a, b) => anyhow::bail!(
            "exactly one of two concurrent requests is served: {a} and {b}\n{one}\n{two}"
        ),
    };
    println!(
        "concurrent requests: {} active on {}, {} waiting at position {}",
        str_of(&served, "serverHostId"),
        str_of(&served, "transitHostId"),
        str_of(&waiting, "serverHostId"),
        waiting["queuePosition"]
    );
    ensure!(
        str_of(&served, "transitHostId") == "transit-1" && !str_of(&served, "startedAt").is_empty(),
        "the served request holds transit-1 from now: {served}"
    );
    ensure!(
        waiting["queuePosition"] == json!(1) && str_of(&waiting, "transitHostId").is_empty(),
        "the second waits with position 1: {waiting}"
    );
    let served_id = str_of(&served, "id").to_owned();
    let waiting_id = str_of(&waiting, "id").to_owned();

    // A VPS of another class waits in its own queue and is never given it.
    let other = request_transit(&rig, "vps-3", daily.clone())?;
    ensure!(
        str_of(&other, "state") == "STATE_WAITING" && other["queuePosition"] == json!(1),
        "the VPS waits, first in the queue of its own class: {other}"
    );
    // Asking twice for one server is refused.
    let again = transit_refused(
        &rig,
        "RequestTransit",
        &json!({
            "request_id": navette_tests::grpcurl::request_id(),
            "server_host_id": str_of(&served, "serverHostId"),
            "price": monthly,
        }),
    )?;
    expect_refusal(
        &again,
        "FailedPrecondition",
        "already has transit allocation",
    )?;

    // The release is refused while the transit host holds an account...
    let accounts_dir = pool.accounts_dir();
    rig.add_account(
        &pool,
        AccountSpec {
            name: "nvk_uma".into(),
            password: "uma-pw".into(),
            pg_databases: vec![],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let refused = transit_refused(&rig, "ReleaseTransit", &json!({"id": served_id}))?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        "still holds the accounts nvk_uma",
    )?;
    println!(
        "refused: {}",
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    std::fs::remove_dir_all(accounts_dir.join("nvk_uma"))?;
    // (The refusal while it holds the server's addresses, moved there by
    // Addresses/MoveAddress, is shown in address_moves.rs.)
    ensure!(
        str_of(&get(&rig, &served_id)?, "state") == "STATE_ACTIVE"
            && get(&rig, &waiting_id)?["queuePosition"] == json!(1),
        "a refused release changes nothing"
    );

    // What the allocation left there (a copy named after it) is wiped; a
    // test's copy on the same host is not.
    let state_dir = transit_agent.state_dir();
    let mine = plant_copy(
        &state_dir,
        &accounts_dir,
        &format!("{served_id}-nvk-tara"),
        "nvk_tara",
    )?;
    let test_copy = plant_copy(&state_dir, &accounts_dir, "t00000000000000a1", "nvk_tara")?;

    let released = transit(&rig, "ReleaseTransit", &json!({"id": served_id}))?;
    ensure!(
        str_of(&released, "state") == "STATE_RELEASED" && !str_of(&released, "endedAt").is_empty(),
        "released, with its end recorded: {released}"
    );
    ensure!(
        !mine.exists(),
        "the allocation's copy was wiped: {}",
        mine.display()
    );
    ensure!(
        test_copy.exists(),
        "a test's copy is not the allocation's: {}",
        test_copy.display()
    );

    let next = get(&rig, &waiting_id)?;
    ensure!(
        str_of(&next, "state") == "STATE_ACTIVE" && str_of(&next, "transitHostId") == "transit-1",
        "the next in line got the transit host: {next}"
    );
    let other = get(&rig, str_of(&other, "id"))?;
    ensure!(
        str_of(&other, "state") == "STATE_WAITING" && str_of(&other, "transitHostId").is_empty(),
        "the VPS of another class still waits: {other}"
    );
    // Releasing twice changes nothing.
    let twice = transit(&rig, "ReleaseTransit", &json!({"id": served_id}))?;
    ensure!(str_of(&twice, "state") == "STATE_RELEASED", "{twice}");

    // The released allocation is a line item of its server: inside the
    // free week, it costs nothing.
    let charges = transit(
        &rig,
        "ListTransitCharges",
        &json!({"server_host_id": str_of(&served, "serverHostId")}),
    )?;
    let charges = list(&charges, "charges");
    let line = charges.first().context("one line item")?;
    ensure!(
        charges.len() == 1
            && str_of(line, "allocationId") == served_id
            && line.get("amountMinorUnits").is_none()
            && line["final"] == json!(true)
            && str_of(line, "freeSeconds") == "604800",
        "a released allocation within its free week costs nothing: {line}"
    );
    println!("line item: {}", str_of(line, "description"));

    // Undrained, the other class's transit host serves the VPS by itself
    // (every controller serves the queues now and then).
    rig.grpcurl_json("navette.v1.Hosts/UndrainHost", &json!({"id": "transit-2"}))?;
    rig.wait_until(
        "the VPS served by transit-2",
        std::time::Duration::from_secs(60),
        || {
            let vps = get(&rig, str_of(&other, "id"))?;
            Ok(str_of(&vps, "state") == "STATE_ACTIVE"
                && str_of(&vps, "transitHostId") == "transit-2")
        },
    )?;
    Ok(())
}
