//! The reinstall hand-off: a dedicated server or VPS whose accounts have
//! all left it is reinstalled with a new version of the software stack by
//! a pluggable *provisioner*, and comes back under the same host id.
//!
//! # Layout
//!
//! - [`flow`]: the reinstall's state, steps and outcomes, and its pure
//!   transition ([`flow::decide`]), every (stage, input) pair unit-tested;
//! - [`kind`]: the reinstall as a workflow kind of the engine
//!   (`"reinstall"`), the effects of its steps: check the host is empty,
//!   mint the one-time join token, run the provisioner, wait for the host;
//! - [`provisioner`]: the provisioner's contract (an executable, the
//!   request as JSON on its standard input) and running it;
//! - [`store`]: reading reinstalls (workflows of kind `reinstall`) and what
//!   the wait watches;
//! - here: what the operator API asks for ([`request`], [`retry`],
//!   [`mark_done`], [`abort`]), decided before anything is sent.
//!
//! Invariants: a reinstall is refused while Navette knows of any account
//! or copy on the host, both when it is asked for and again from the
//! host's own agent before the provisioner runs (*"a reinstall requested
//! while accounts still live on the server"*); at most one reinstall of a
//! host is under way (requests for one host are decided under its row
//! lock); the reinstalled host keeps its id, kind, pool and class (its
//! token is bound to them), and its previous installation's certificate
//! stops working at its enrolment; no host but the one reinstalled is
//! touched; the provisioner never gets anything a customer wrote.

pub mod flow;
pub mod kind;
pub mod provisioner;
pub mod store;

use chrono::{DateTime, Utc};
use serde_json::json;

pub use flow::{Reinstall, Stage};
pub use kind::ReinstallKind;

use crate::engine::{self, WorkflowId};
use crate::error::{Error, Result};
use crate::state::Controller;

/// The workflow kind's name (`workflows.kind`): never rename it.
pub const KIND: &str = "reinstall";

/// The longest wait for a host a request may ask for: 7 days.
pub const MAX_ENROLMENT_TIMEOUT_SECS: u32 = 7 * 86_400;

/// A stack version: 1–64 characters of A-Z a-z 0-9 . _ - +.
pub const STACK_VERSION: crate::ids::Rule = crate::ids::Rule {
    max: 64,
    allowed: |_, _, b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'),
    words: "1–64 characters of A-Z, a-z, 0-9, '.', '_', '-' and '+'",
};

/// A reinstall as operators read it.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub reinstall: Reinstall,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an operator asks for.
#[derive(Clone, Debug)]
pub struct NewReinstall<'a> {
    pub request_id: &'a str,
    pub host_id: &'a str,
    pub stack_version: &'a str,
    /// `None`: the configuration's `enrolment_timeout_secs`.
    pub enrolment_timeout_secs: Option<u64>,
    pub requested_by: &'a str,
}

/// Starts a reinstall, or returns the one `request_id` started already.
/// Refused while accounts live on the host, while another reinstall of it
/// is under way, or without a provisioner.
pub async fn request(controller: &Controller, new: &NewReinstall<'_>) -> Result<View> {
    let config = &controller.config.reinstall;
    if config.provisioner.is_empty() {
        return Err(Error::FailedPrecondition(
            "this controller has no provisioner: set [reinstall] provisioner in its configuration (see controller.example.toml)"
                .to_owned(),
        ));
    }
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    let removed = store::lock_host(&*transaction, new.host_id).await?;
    if let Some(existing) = store::by_request(&*transaction, new.request_id).await? {
        let same = &existing.reinstall;
        if same.host_id == new.host_id && same.stack_version == new.stack_version {
            return Ok(existing);
        }
        return Err(Error::AlreadyExists(format!(
            "request id {:?} was already used for the reinstall {} of host {}; use a new request id",
            new.request_id, same.id, same.host_id
        )));
    }
    if removed {
        return Err(Error::FailedPrecondition(format!(
            "host {} was removed; enrol it again before reinstalling it",
            new.host_id
        )));
    }
    let accounts = store::accounts_on(&*transaction, new.host_id).await?;
    if !accounts.is_empty() {
        return Err(Error::FailedPrecondition(flow::accounts_still_live(
            new.host_id,
            &accounts,
        )));
    }
    if let Some(under_way) = store::list(&*transaction, Some(new.host_id), false)
        .await?
        .first()
    {
        return Err(Error::FailedPrecondition(format!(
            "reinstall {} of host {} is under way ({}); wait for it to end, or abort it",
            under_way.reinstall.id,
            new.host_id,
            under_way.reinstall.stage.as_str()
        )));
    }
    let id = WorkflowId::generate(KIND);
    let state = Reinstall::new(
        id.as_str(),
        new.request_id,
        new.host_id,
        new.stack_version,
        new.requested_by,
        new.enrolment_timeout_secs
            .unwrap_or(config.enrolment_timeout_secs)
            .max(1),
    );
    let value = serde_json::to_value(&state)
        .map_err(|error| Error::Internal(format!("encoding a reinstall: {error}")))?;
    engine::store::create(
        &*transaction,
        &engine::store::NewWorkflow {
            id: &id,
            kind: KIND,
            state: &value,
            parent: None,
            sender: new.requested_by,
        },
    )
    .await?;
    let view = store::get(&*transaction, id.as_str()).await?;
    transaction.commit().await?;
    tracing::info!(message = "reinstall requested", reinstall = %id, host_id = %new.host_id, stack_version = %new.stack_version, by = %new.requested_by);
    Ok(view)
}

/// A stuck reinstall's reading, or why the command does not apply.
async fn stuck(client: &impl tokio_postgres::GenericClient, id: &str, what: &str) -> Result<View> {
    let view = store::get(client, id).await?;
    let stage = view.reinstall.stage;
    if stage != Stage::Stuck {
        return Err(Error::FailedPrecondition(format!(
            "reinstall {id} is {}, not stuck; {what} applies only to a stuck reinstall",
            stage.as_str()
        )));
    }
    Ok(view)
}

/// Runs a stuck reinstall's provisioner again (a new token), or its check
/// if that is what failed; `enrolment_timeout_secs` replaces the wait.
pub async fn retry(
    controller: &Controller,
    id: &WorkflowId,
    enrolment_timeout_secs: Option<u64>,
    by: &str,
) -> Result<View> {
    let client = controller.db.get().await?;
    let view = stuck(&**client, id.as_str(), "a retry").await?;
    let payload = json!({ "by": by, "enrolment_timeout_secs": enrolment_timeout_secs });
    engine::store::command(&**client, id, flow::RETRY, &payload, by).await?;
    Ok(view)
}

/// Declares a stuck reinstall done.
pub async fn mark_done(
    controller: &Controller,
    id: &WorkflowId,
    note: &str,
    by: &str,
) -> Result<View> {
    let client = controller.db.get().await?;
    let view = stuck(&**client, id.as_str(), "marking it done").await?;
    let payload = json!({ "by": by, "note": note });
    engine::store::command(&**client, id, flow::MARK_DONE, &payload, by).await?;
    Ok(view)
}

/// Aborts a reinstall that has not ended: the command (who and why),
/// then the engine's cancel, which stops a running provisioner or wait.
pub async fn abort(controller: &Controller, id: &WorkflowId, note: &str, by: &str) -> Result<View> {
    let mut client = controller.db.get().await?;
    let view = store::get(&**client, id.as_str()).await?;
    if view.reinstall.stage.ended() {
        return Err(Error::FailedPrecondition(format!(
            "reinstall {id} has ended ({}); there is nothing to abort",
            view.reinstall.stage.as_str()
        )));
    }
    let payload = json!({ "by": by, "note": note });
    engine::store::command(&**client, id, flow::ABORT, &payload, by).await?;
    match engine::store::cancel(&mut client, id, by).await {
        // It ended meanwhile: the command was the last word.
        Ok(_) | Err(Error::FailedPrecondition(_)) => Ok(view),
        Err(error) => Err(error),
    }
}
