//! The workflows' operator API (`navette.v1.Workflows`) through grpcurl on
//! a real controller: listing, reading one and its audit trail, cancelling
//! (with its children), a cancel after the point of no return refused with
//! FAILED_PRECONDITION, ids checked at the edge, operators only.
//!
//! The workflows are written into the controller's database directly, of
//! a kind no controller runs, so that they stay as written while the test
//! reads them.

mod support;

use anyhow::ensure;
use navette_tests::{ControllerSpec, Rig};
use serde_json::json;
use support::{expect_refusal, list, str_of};

const WORKFLOWS: &str = "
    INSERT INTO workflows (id, kind, state, requested_by) VALUES
        ('plan-1', 'unregistered', '{\"accounts\": 2}', 'operator bob');
    INSERT INTO workflows (id, kind, state, requested_by, parent_id) VALUES
        ('move-1', 'unregistered', '{}', 'plan-1', 'plan-1'),
        ('move-2', 'unregistered', '{}', 'plan-1', 'plan-1');
    INSERT INTO workflows (id, kind, state, step, requested_by, point_of_no_return_at) VALUES
        ('switched', 'unregistered', '{}', '\"switch\"', 'customer alice', now());
    INSERT INTO workflow_audit (workflow_id, what, who, detail) VALUES
        ('plan-1', 'created', 'operator bob', 'unregistered workflow'),
        ('switched', 'point_of_no_return', 'customer alice', 'asked at 2026-12-01T10:00:00.000Z');
    UPDATE workflows SET done = true, outcome = 'completed' WHERE id = 'move-2';
";

#[test]
fn operators_read_workflows_and_their_audit_and_cancel_until_the_point_of_no_return()
-> anyhow::Result<()> {
    let rig = Rig::new("engine_operator_api")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    controller.state_db().psql("navette", WORKFLOWS)?;

    let listed = rig.grpcurl_json("navette.v1.Workflows/ListWorkflows", &json!({}))?;
    let ids: Vec<String> = list(&listed, "workflows")
        .iter()
        .map(|w| str_of(w, "id").to_owned())
        .collect();
    ensure!(ids == ["plan-1", "move-1", "switched"], "{listed}");
    let children = rig.grpcurl_json(
        "navette.v1.Workflows/ListWorkflows",
        &json!({"parentId": "plan-1", "includeEnded": true}),
    )?;
    ensure!(list(&children, "workflows").len() == 2, "{children}");

    let switched = rig.grpcurl_json(
        "navette.v1.Workflows/GetWorkflow",
        &json!({"id": "switched"}),
    )?;
    ensure!(str_of(&switched, "step") == "switch", "{switched}");
    ensure!(
        !str_of(&switched, "pointOfNoReturnAt").is_empty(),
        "{switched}"
    );

    // After the point of no return: refused, and the refusal audited.
    let api = rig.controller_access()?.api.to_string();
    let refused = rig.grpcurl(&[
        "-d",
        r#"{"id": "switched"}"#,
        &api,
        "navette.v1.Workflows/CancelWorkflow",
    ])?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        "passed its point of no return",
    )?;
    expect_refusal(&refused, "FailedPrecondition", "asked by customer alice")?;
    let trail = rig.grpcurl_json(
        "navette.v1.Workflows/ListWorkflowAudit",
        &json!({"id": "switched"}),
    )?;
    let whats: Vec<&str> = list(&trail, "entries")
        .iter()
        .map(|e| match e.get("what").and_then(|w| w.as_str()) {
            Some("point_of_no_return") => "point_of_no_return",
            Some("command_refused") => "command_refused",
            _ => "other",
        })
        .collect();
    ensure!(
        whats == ["point_of_no_return", "command_refused"],
        "{trail}"
    );
    let refusal = &list(&trail, "entries")[1];
    ensure!(str_of(refusal, "who").contains("operator"), "{refusal}");

    // Before it: delivered to the workflow and its unfinished child.
    let cancelled = rig.grpcurl_json(
        "navette.v1.Workflows/CancelWorkflow",
        &json!({"id": "plan-1"}),
    )?;
    ensure!(
        cancelled["cancelledIds"] == json!(["plan-1", "move-1"]),
        "{cancelled}"
    );
    let trail = rig.grpcurl_json(
        "navette.v1.Workflows/ListWorkflowAudit",
        &json!({"id": "move-1"}),
    )?;
    let entry = list(&trail, "entries")
        .into_iter()
        .next()
        .unwrap_or_default();
    ensure!(str_of(&entry, "what") == "command", "{trail}");
    ensure!(
        str_of(&entry, "detail").contains("ancestor plan-1 was cancelled"),
        "{trail}"
    );
    let ended = rig.grpcurl(&[
        "-d",
        r#"{"id": "move-2"}"#,
        &api,
        "navette.v1.Workflows/CancelWorkflow",
    ])?;
    expect_refusal(&ended, "FailedPrecondition", "has ended (completed)")?;

    // Ids are checked at the edge, and refusals stay short (100 KB: what
    // one command-line argument holds).
    let nul = rig.grpcurl(&[
        "-d",
        r#"{"id": "plan\u0000-1"}"#,
        &api,
        "navette.v1.Workflows/GetWorkflow",
    ])?;
    expect_refusal(&nul, "InvalidArgument", "id must be")?;
    let long = json!({"id": "x".repeat(100_000)}).to_string();
    let long = rig.grpcurl(&["-d", &long, &api, "navette.v1.Workflows/ListWorkflowAudit"])?;
    expect_refusal(&long, "InvalidArgument", "id must be")?;
    ensure!(
        long.stderr.len() < 400,
        "{} bytes of error",
        long.stderr.len()
    );
    let missing = rig.grpcurl(&[
        "-d",
        r#"{"id": "nothing"}"#,
        &api,
        "navette.v1.Workflows/GetWorkflow",
    ])?;
    expect_refusal(&missing, "NotFound", "workflow \"nothing\" not found")?;

    // Operators only.
    let access = rig.controller_access()?;
    let panel = rig.grpcurl_as(
        &access.panel,
        &["-d", "{}", &api, "navette.v1.Workflows/ListWorkflows"],
    )?;
    expect_refusal(&panel, "PermissionDenied", "operator API")?;
    Ok(())
}
