//! The rig's provisioner: how a host of the rig is reinstalled when the
//! controller asks for it.
//!
//! The controller really runs an executable and really gives it the host,
//! its class, the stack version and a fresh join token
//! (`tests/rig/provisioner.sh`, the controller's `[reinstall]
//! provisioner`). The rig's hosts, though, are namespaces whose processes
//! belong to the test process (it starts them, watches them, kills them at
//! teardown), so the script does what a real provisioner does with a
//! provider's API: it hands the request over, here through a spool
//! directory, and reports the answer it gets. The test reads each request
//! ([`Provisioner::next_request`]), answers it (accepted, or failed with a
//! reason), and performs the reinstall with [`Rig::reinstall_host`]: the
//! host's agent and database servers stop, its root directory is wiped,
//! and it comes back with PostgreSQL 18, MariaDB 11.8 and a new agent that
//! enrols with the token from the request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::agent::{Agent, AgentKind, AgentSpec};
use crate::controller::ReinstallSection;
use crate::netns::Netns;
use crate::rig::Rig;

/// The host's class as the provisioner is told it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ProvisionClass {
    pub kind: Option<String>,
    pub pool: Option<String>,
    pub declared_disk_bytes: Option<u64>,
    /// The transit pool's configuration class.
    pub configuration_class: Option<String>,
}

/// A request the controller gave the provisioner (contract 1).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ProvisionRequest {
    pub contract: u32,
    pub reinstall_id: String,
    pub attempt: u32,
    pub host_id: String,
    pub class: ProvisionClass,
    pub stack_version: String,
    pub join_token: String,
    pub join_token_expires_at: String,
    pub addresses: Vec<String>,
    pub agent_endpoint: String,
}

impl ProvisionRequest {
    /// The spool file's name without its extension.
    fn base(&self) -> String {
        format!("{}.{}", self.reinstall_id, self.attempt)
    }

    /// The id of the join token in the request (the secret is
    /// `<id>.<tag>`).
    pub fn join_token_id(&self) -> &str {
        self.join_token
            .split_once('.')
            .map_or(self.join_token.as_str(), |(id, _)| id)
    }
}

/// The rig's side of the provisioner: its spool directory.
#[derive(Clone, Debug)]
pub struct Provisioner {
    spool: PathBuf,
}

impl Rig {
    /// The rig's provisioner, its spool under the rig's directory.
    pub fn provisioner(&self) -> anyhow::Result<Provisioner> {
        let spool = self.dir().join("provisioner");
        crate::rig::make_dir(&spool, 0o700)?;
        Ok(Provisioner { spool })
    }
}

impl Provisioner {
    /// The controller's `[reinstall]` section running this provisioner.
    pub fn controller_section(
        &self,
        provisioner_timeout_secs: u64,
        enrolment_timeout_secs: u64,
    ) -> ReinstallSection {
        let script = crate::install::workspace_dir().join("tests/rig/provisioner.sh");
        ReinstallSection {
            provisioner: vec![
                script.display().to_string(),
                self.spool.display().to_string(),
            ],
            provisioner_timeout_secs,
            enrolment_timeout_secs,
        }
    }

    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// Every request received so far, answered or not, oldest first.
    pub fn requests(&self) -> anyhow::Result<Vec<ProvisionRequest>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.spool)
            .with_context(|| format!("reading {}", self.spool.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "request") {
                let modified = std::fs::metadata(&path)?.modified()?;
                found.push((modified, read_request(&path)?));
            }
        }
        found.sort_by_key(|(modified, _)| *modified);
        Ok(found.into_iter().map(|(_, request)| request).collect())
    }

    /// Waits for a request not answered yet.
    pub fn next_request(&self, timeout: Duration) -> anyhow::Result<ProvisionRequest> {
        let mut next = None;
        crate::wait_until("a request to the rig's provisioner", timeout, || {
            next = self
                .requests()?
                .into_iter()
                .find(|request| !self.answer_path(request).exists());
            Ok(next.is_some())
        })?;
        next.context("no request")
    }

    fn answer_path(&self, request: &ProvisionRequest) -> PathBuf {
        self.spool.join(format!("{}.answer", request.base()))
    }

    fn answer(&self, request: &ProvisionRequest, text: &str) -> anyhow::Result<()> {
        let path = self.answer_path(request);
        let temporary = path.with_extension("answer.tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The provider took the request: the provisioner exits 0, saying
    /// `said`.
    pub fn accept(&self, request: &ProvisionRequest, said: &str) -> anyhow::Result<()> {
        self.answer(request, &format!("accepted {said}"))
    }

    /// The provider refused: the provisioner exits 1 with `reason`.
    pub fn fail(&self, request: &ProvisionRequest, reason: &str) -> anyhow::Result<()> {
        if reason.starts_with("accepted") {
            bail!("a failure's reason cannot begin with \"accepted\"");
        }
        self.answer(request, reason)
    }
}

fn read_request(path: &Path) -> anyhow::Result<ProvisionRequest> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a request", path.display()))
}

impl Rig {
    /// Reinstalls `host` as `request` asks: stops its agent (`old_agent`)
    /// and database servers, wipes its root directory, starts PostgreSQL
    /// 18 and MariaDB 11.8 on it, and a new agent of `kind` on the
    /// request's stack version that enrols with the request's token.
    /// Returns the new agent, listening.
    pub fn reinstall_host(
        &self,
        host: &Netns,
        old_agent: &Agent,
        request: &ProvisionRequest,
        kind: AgentKind,
    ) -> anyhow::Result<Agent> {
        if request.host_id != host.host() {
            bail!(
                "the request is for host {}, not {}",
                request.host_id,
                host.host()
            );
        }
        old_agent.stop();
        let old = self.forget_servers(host);
        for server in &old.postgres {
            server.stop();
        }
        for server in &old.mariadb {
            server.stop();
        }
        std::fs::remove_dir_all(host.root())
            .with_context(|| format!("wiping {}", host.root().display()))?;
        host.make_root()?;
        host.start_postgres(self, crate::PgVersion::V18, 5432)?;
        host.start_mariadb_11_8(self)?;
        self.start_agent(
            host,
            AgentSpec {
                kind,
                stack_version: request.stack_version.clone(),
                token: request.join_token.clone(),
                ..AgentSpec::default()
            },
        )
    }
}
