//! The provisioner: the provider's own tooling that reinstalls a server,
//! behind a small contract Navette keeps. It is an executable (with its
//! arguments) named by `[reinstall] provisioner` in the controller's
//! configuration; the controller runs it once per attempt.
//!
//! # The contract (version 1)
//!
//! - **Input**: one JSON object on standard input ([`Request`]):
//!   `contract` (1), `reinstall_id`, `attempt` (1, 2... a retry adds one),
//!   `host_id`, `class` (`kind`, `pool`, `declared_disk_bytes` and
//!   `configuration_class`, as the operator set them: the last is the
//!   transit pool's class, `TransitPool/SetConfigurationClass`, which
//!   `Host.configuration_class` shows and which the reinstalled host
//!   keeps; absent values are `null`), `stack_version` (what
//!   to install), `join_token` (a fresh one-time token bound to the same
//!   host id: the reinstalled host's agent enrols with it, `navette-agent
//!   enrol --token`, and keeps the host's id), `join_token_expires_at`
//!   (RFC 3339), `addresses` and `agent_endpoint` (as the host last
//!   reported them). The environment holds `NAVETTE_REINSTALL_ID`,
//!   `NAVETTE_ATTEMPT`, `NAVETTE_HOST_ID` and `NAVETTE_STACK_VERSION`
//!   (never the token: environments are easier to leak than a pipe), and
//!   `PATH`; nothing else of the controller's environment.
//! - **Exit 0**: accepted. The host is being (or has been) reinstalled;
//!   Navette waits for its agent to enrol with the token and report the
//!   stack version. Standard output (its end, at most 400 bytes) is kept
//!   for the operator.
//! - **Any other exit**, or still running after `provisioner_timeout_secs`
//!   (then killed): failed. The end of standard error (at most 400 bytes)
//!   is the reason the reinstall shows as stuck.
//! - **Idempotent**: a controller that dies while the provisioner runs
//!   runs it again with the same `reinstall_id`, `attempt` and token; the
//!   provisioner must treat that as the same request. A new attempt comes
//!   with a new token (the previous one is revoked).
//!
//! Invariant: the provisioner runs with the controller's privileges but
//! gets nothing customer-controlled: every field comes from the operator
//! or the controller.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The contract's version, sent as `contract`.
pub const CONTRACT: u32 = 1;

/// Most bytes kept of the provisioner's output and error.
const KEPT_BYTES: usize = 400;

/// The host's class, as the operator set it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Class {
    pub kind: Option<String>,
    pub pool: Option<String>,
    pub declared_disk_bytes: Option<u64>,
    /// The configuration class (CPU, memory, disk under one name) the
    /// transit pool matches on: the same one, so the provider reinstalls
    /// the server as the configuration its transit host was chosen for.
    pub configuration_class: Option<String>,
}

/// What the provisioner reads on its standard input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Request {
    pub contract: u32,
    pub reinstall_id: String,
    pub attempt: u32,
    pub host_id: String,
    pub class: Class,
    pub stack_version: String,
    pub join_token: String,
    pub join_token_expires_at: String,
    pub addresses: Vec<String>,
    pub agent_endpoint: String,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Exit 0, with the end of its standard output.
    Accepted(String),
    /// Why it failed, in words for the operator.
    Failed(String),
    /// A cancel arrived: the provisioner was killed.
    Stopped,
}

/// Runs `command` with `request`, for at most `timeout`, killing it when
/// `cancel` becomes true.
pub async fn run(
    command: &[String],
    request: &Request,
    timeout: Duration,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Ran {
    let Some((program, args)) = command.split_first() else {
        return Ran::Failed(
            "no provisioner is configured: set [reinstall] provisioner in the controller's configuration"
                .to_owned(),
        );
    };
    let input = match serde_json::to_vec(request) {
        Ok(input) => input,
        Err(error) => return Ran::Failed(format!("encoding the request: {error}")),
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("NAVETTE_REINSTALL_ID", &request.reinstall_id)
        .env("NAVETTE_ATTEMPT", request.attempt.to_string())
        .env("NAVETTE_HOST_ID", &request.host_id)
        .env("NAVETTE_STACK_VERSION", &request.stack_version)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            return Ran::Failed(format!("cannot start the provisioner {program}: {error}"));
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Ran::Failed("the provisioner's pipes could not be opened".to_owned());
    };
    let talk = async {
        // A provisioner that does not read its input still gets to run.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (_, _, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        (status, out, err)
    };
    let cancelled = async {
        // A sender gone (the step is over) is no cancel.
        if cancel.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        (status, out, err) = talk => match status {
            Ok(status) if status.success() => Ran::Accepted(tail(&out)),
            Ok(status) => {
                let said = tail(&err);
                let said = if said.is_empty() { "(nothing on its standard error)".to_owned() } else { said };
                Ran::Failed(format!("{program} exited with {status}: {said}"))
            }
            Err(error) => Ran::Failed(format!("waiting for {program}: {error}")),
        },
        () = tokio::time::sleep(timeout) => Ran::Failed(format!(
            "{program} was still running after {} s and was killed ([reinstall] provisioner_timeout_secs)",
            timeout.as_secs()
        )),
        () = cancelled => Ran::Stopped,
    }
    // Leaving the select drops `talk` and with it the child: killed.
}

/// The end of `bytes` as text: at most [`KEPT_BYTES`], trimmed, control
/// characters (but new lines) replaced.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut start = text.len().saturating_sub(KEPT_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..]
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect::<String>()
        .replace('\n', " / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            contract: CONTRACT,
            reinstall_id: "reinstall-1".to_owned(),
            attempt: 2,
            host_id: "ded-1".to_owned(),
            class: Class {
                kind: Some("dedicated".to_owned()),
                pool: None,
                declared_disk_bytes: Some(1 << 30),
                configuration_class: Some("c8-m32-d960".to_owned()),
            },
            stack_version: "2026.1".to_owned(),
            join_token: "00aa.ffff".to_owned(),
            join_token_expires_at: "2026-12-02T06:00:00+00:00".to_owned(),
            addresses: vec!["192.0.2.20".to_owned()],
            agent_endpoint: "192.0.2.20:7445".to_owned(),
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    async fn run_script(script: &str, timeout: Duration) -> Ran {
        let (_keep, mut cancel) = tokio::sync::watch::channel(false);
        run(&sh(script), &request(), timeout, &mut cancel).await
    }

    #[tokio::test]
    async fn the_provisioner_reads_the_request_and_its_environment() {
        let ran = run_script(
            r#"read -r line; case "$line" in *'"host_id":"ded-1","class":{"kind":"dedicated"'*'"stack_version":"2026.1","join_token":"00aa.ffff"'*) ;; *) exit 3;; esac
               echo "$NAVETTE_REINSTALL_ID $NAVETTE_ATTEMPT $NAVETTE_HOST_ID $NAVETTE_STACK_VERSION ${HOME:-nohome}""#,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            ran,
            Ran::Accepted("reinstall-1 2 ded-1 2026.1 nohome".to_owned())
        );
    }

    #[tokio::test]
    async fn a_failure_says_the_exit_and_the_end_of_standard_error() {
        let ran = run_script(
            "echo first >&2; echo 'server locked' >&2; exit 4",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            ran,
            Ran::Failed("/bin/sh exited with exit status: 4: first / server locked".to_owned())
        );
    }

    #[tokio::test]
    async fn a_provisioner_past_its_time_is_killed() {
        let ran = run_script("sleep 30", Duration::from_millis(200)).await;
        assert!(
            matches!(&ran, Ran::Failed(why) if why.contains("still running after 0 s")),
            "{ran:?}"
        );
    }

    #[tokio::test]
    async fn a_cancel_stops_it() {
        let (stop, mut cancel) = tokio::sync::watch::channel(false);
        let (command, request) = (sh("sleep 30"), request());
        let stopping = async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = stop.send(true);
            // Keep the sender: a sender gone is no cancel.
            tokio::time::sleep(Duration::from_secs(60)).await;
        };
        let ran = tokio::select! {
            ran = run(&command, &request, Duration::from_secs(60), &mut cancel) => ran,
            () = stopping => Ran::Failed("the cancel was not seen".to_owned()),
        };
        assert_eq!(ran, Ran::Stopped);
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_failure_naming_it() {
        let (_keep, mut cancel) = tokio::sync::watch::channel(false);
        let ran = run(
            &["/nonexistent/provision".to_owned()],
            &request(),
            Duration::from_secs(5),
            &mut cancel,
        )
        .await;
        assert!(
            matches!(&ran, Ran::Failed(why) if why.starts_with("cannot start the provisioner /nonexistent/provision")),
            "{ran:?}"
        );
    }

    #[test]
    fn the_tail_keeps_the_end_on_a_character_boundary() {
        let long = format!("{}é end", "x".repeat(1000));
        let kept = tail(long.as_bytes());
        assert!(kept.len() <= KEPT_BYTES);
        assert!(kept.ends_with("é end"));
    }
}
