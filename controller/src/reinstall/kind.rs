//! The reinstall as a kind of the workflow engine ([`ReinstallKind`],
//! `"reinstall"`): its transition is [`flow::decide`]; here are its
//! steps' effects.
//!
//! - `check`: a fresh inventory from the host's agent (stored, as any
//!   inventory): the accounts and copies it reports;
//! - `mint_token`: revokes the previous attempt's token, creates this
//!   attempt's through `enrolment::create_join_token`, bound to the host's
//!   id with the host's kind, pool and class (so the re-enrolment keeps
//!   them), valid for the provisioner's time plus the wait. Its request id
//!   is `<reinstall id>.attempt-<n>`: run again, it returns the same token;
//! - `provision`: the provisioner ([`super::provisioner`]) with the
//!   attempt's token (its secret derived again, never stored);
//! - `await_enrolment`: watches the token and the host's row (every
//!   250 ms, up to 10 s a run) until the token was used and an inventory
//!   arrived after it, with the stack version asked for;
//! - `revoke_token`: revokes the current token (abort, mark done).
//!
//! Invariant: every step is safe to run again (the token's request id, the
//! provisioner's contract, revocation and reads are idempotent).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::flow::{self, Outcome, Reinstall, Seen, Step};
use super::{KIND, provisioner, store as reinstall_store};
use crate::engine::{Input, Kind, StepContext, Transition};
use crate::enrolment::{self, TokenRequest};
use crate::error::Error;
use crate::model::HostKind;
use crate::state::Controller;
use crate::store;

/// How often the wait for the host reads its row.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Longest run of the wait step (then it runs again), so that commands
/// in the inbox are taken within this.
const WATCH_AT_MOST: Duration = Duration::from_secs(10);

pub struct ReinstallKind {
    controller: Arc<Controller>,
}

impl ReinstallKind {
    pub fn new(controller: Arc<Controller>) -> ReinstallKind {
        ReinstallKind { controller }
    }
}

impl Kind for ReinstallKind {
    const NAME: &'static str = KIND;
    type State = Reinstall;
    type Step = Step;
    type Outcome = Outcome;

    fn transition(&self, state: &Reinstall, input: Input<Outcome>) -> Transition<Reinstall, Step> {
        flow::decide(state, input)
    }

    async fn perform(&self, state: &Reinstall, step: &Step, context: &StepContext) -> Outcome {
        let controller = &self.controller;
        let result = match step {
            Step::Check => check(controller, state).await,
            Step::MintToken => mint_token(controller, state).await,
            Step::Provision => provision(controller, state, context).await,
            Step::AwaitEnrolment => await_enrolment(controller, state, context).await,
            Step::RevokeToken => revoke(controller, state.token_id.as_deref())
                .await
                .map(|()| Outcome::TokenRevoked),
        };
        let outcome = result.unwrap_or_else(|error| Outcome::Trouble(error.to_string()));
        tracing::info!(message = "reinstall step", reinstall = %state.id, host_id = %state.host_id, step = ?step, outcome = ?outcome);
        outcome
    }

    fn failed(&self, outcome: &Outcome) -> bool {
        matches!(
            outcome,
            Outcome::CannotCheck(_) | Outcome::ProvisionerFailed(_) | Outcome::Trouble(_)
        )
    }
}

async fn check(controller: &Controller, state: &Reinstall) -> Result<Outcome, Error> {
    let host = {
        let client = controller.db.get().await?;
        store::hosts::get(&**client, &state.host_id).await?
    };
    let inventory = match crate::agents::get_inventory(controller, &host).await {
        Ok(inventory) => inventory,
        Err(error) => return Ok(Outcome::CannotCheck(error.to_string())),
    };
    let client = controller.db.get().await?;
    store::hosts::store_inventory(&**client, &host.id, &inventory).await?;
    let mut accounts: Vec<String> = inventory
        .accounts
        .iter()
        .map(|account| account.name.clone())
        .collect();
    accounts.sort();
    accounts.dedup();
    Ok(Outcome::Checked { accounts })
}

/// This attempt's token request id: the same on a step run again.
fn token_request_id(state: &Reinstall) -> String {
    format!("{}.attempt-{}", state.id, state.attempt.saturating_add(1))
}

async fn mint_token(controller: &Controller, state: &Reinstall) -> Result<Outcome, Error> {
    revoke(controller, state.token_id.as_deref()).await?;
    let host = {
        let client = controller.db.get().await?;
        store::hosts::get(&**client, &state.host_id).await?
    };
    let config = &controller.config.reinstall;
    let request_id = token_request_id(state);
    let created_by = format!("reinstall {}", state.id);
    let (token, _secret) = enrolment::create_join_token(
        &controller.db,
        &controller.ca,
        &TokenRequest {
            request_id: &request_id,
            host_id: &host.id,
            pool: host.pool.as_deref(),
            kind: host.kind,
            declared_disk_bytes: host.declared_disk_bytes,
            created_by: &created_by,
            ttl_secs: config
                .provisioner_timeout_secs
                .saturating_add(state.enrolment_timeout_secs)
                .saturating_add(300),
        },
    )
    .await?;
    Ok(Outcome::TokenMinted { token_id: token.id })
}

async fn provision(
    controller: &Controller,
    state: &Reinstall,
    context: &StepContext,
) -> Result<Outcome, Error> {
    let Some(token_id) = state.token_id.as_deref() else {
        return Ok(Outcome::ProvisionerFailed(
            "no join token was minted for this attempt".to_owned(),
        ));
    };
    let (host, configuration_class, watched) = {
        let client = controller.db.get().await?;
        (
            store::hosts::get(&**client, &state.host_id).await?,
            store::transit::host_class(&**client, &state.host_id).await?,
            reinstall_store::watch(&**client, token_id).await?,
        )
    };
    let request = provisioner::Request {
        contract: provisioner::CONTRACT,
        reinstall_id: state.id.clone(),
        attempt: state.attempt,
        host_id: host.id.clone(),
        class: provisioner::Class {
            kind: host.kind.map(HostKind::as_str).map(str::to_owned),
            pool: host.pool.clone(),
            declared_disk_bytes: host.declared_disk_bytes,
            configuration_class,
        },
        stack_version: state.stack_version.clone(),
        join_token: enrolment::token_secret(&controller.ca, token_id),
        join_token_expires_at: watched.token_expires_at.to_rfc3339(),
        addresses: host.addresses.clone(),
        agent_endpoint: host.agent_endpoint.clone(),
    };
    let config = &controller.config.reinstall;
    let mut cancel = context.cancel_requested.clone();
    tracing::info!(message = "running the provisioner", reinstall = %state.id, host_id = %host.id, attempt = state.attempt, stack_version = %state.stack_version);
    Ok(
        match provisioner::run(
            &config.provisioner,
            &request,
            Duration::from_secs(config.provisioner_timeout_secs.max(1)),
            &mut cancel,
        )
        .await
        {
            provisioner::Ran::Accepted(output) => Outcome::Provisioned {
                at: Utc::now(),
                output,
            },
            provisioner::Ran::Failed(why) => Outcome::ProvisionerFailed(why),
            provisioner::Ran::Stopped => Outcome::Stopped,
        },
    )
}

async fn await_enrolment(
    controller: &Controller,
    state: &Reinstall,
    context: &StepContext,
) -> Result<Outcome, Error> {
    let Some(token_id) = state.token_id.as_deref() else {
        return Ok(Outcome::NotBack {
            at: Utc::now(),
            seen: None,
        });
    };
    let began = tokio::time::Instant::now();
    let mut cancel = context.cancel_requested.clone();
    loop {
        let watched = {
            let client = controller.db.get().await?;
            reinstall_store::watch(&**client, token_id).await?
        };
        let now = Utc::now();
        let seen = seen(&watched);
        if let Some(Seen {
            enrolled_at,
            stack_version: Some(reported),
        }) = &seen
            && *reported == state.stack_version
        {
            return Ok(Outcome::Back {
                enrolled_at: *enrolled_at,
            });
        }
        let past_deadline = state.deadline.is_none_or(|deadline| now >= deadline);
        if past_deadline || began.elapsed() >= WATCH_AT_MOST {
            return Ok(Outcome::NotBack { at: now, seen });
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            Ok(_) = cancel.wait_for(|stop| *stop) => return Ok(Outcome::Stopped),
        }
    }
}

/// What the host showed after enrolling with the token: nothing until the
/// token was used; the stack version of an inventory received after that.
fn seen(watched: &reinstall_store::Watched) -> Option<Seen> {
    let used_at = watched.token_used_at?;
    let enrolled_at = watched.enrolled_at.unwrap_or(used_at);
    let fresh = watched
        .inventory_updated_at
        .is_some_and(|inventory| inventory > used_at);
    Some(Seen {
        enrolled_at,
        stack_version: fresh.then(|| watched.stack_version.clone()),
    })
}

async fn revoke(controller: &Controller, token_id: Option<&str>) -> Result<(), Error> {
    let Some(token_id) = token_id else {
        return Ok(());
    };
    let client = controller.db.get().await?;
    match store::tokens::revoke(&**client, token_id).await {
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn at(secs: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .unwrap_or_default()
    }

    fn watched(used: Option<i64>, inventory: Option<i64>) -> reinstall_store::Watched {
        reinstall_store::Watched {
            token_used_at: used.map(at),
            token_expires_at: at(1000),
            enrolled_at: used.map(at),
            stack_version: "2026.1".to_owned(),
            inventory_updated_at: inventory.map(at),
        }
    }

    #[test]
    fn only_an_inventory_after_the_enrolment_with_the_token_counts() {
        // The old installation's inventory, before the token was used.
        assert_eq!(seen(&watched(None, Some(5))), None);
        let before = seen(&watched(Some(10), Some(5)));
        assert_eq!(before.and_then(|s| s.stack_version), None);
        let after = seen(&watched(Some(10), Some(11)));
        assert_eq!(
            after,
            Some(Seen {
                enrolled_at: at(10),
                stack_version: Some("2026.1".to_owned())
            })
        );
    }

    #[test]
    fn each_attempt_has_its_own_token_request_id() {
        let mut state = Reinstall::new("reinstall-ab", "r", "h", "2026.1", "op", 60);
        assert_eq!(token_request_id(&state), "reinstall-ab.attempt-1");
        state.attempt = 1;
        assert_eq!(token_request_id(&state), "reinstall-ab.attempt-2");
    }
}
