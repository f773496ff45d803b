//! What the cutover tests share: a rig host (or two) with an enrolled
//! agent, called over mutual TLS as the controller does, and the
//! cutover rpcs in short forms.

#![allow(dead_code)]

use std::net::Ipv4Addr;

use navette_proto::v1::agent_client::AgentClient;
use navette_tests::{Agent, AgentKind, AgentSpec, Controller, ControllerSpec, Netns, Rig};

/// A rig with a controller; hosts are added by the test.
pub struct World {
    pub rig: Rig,
    pub controller: Controller,
}

impl World {
    pub fn new(test: &str) -> anyhow::Result<World> {
        let rig = Rig::new(test)?;
        let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
        let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
        Ok(World { rig, controller })
    }

    /// Starts and enrols the agent of `host` (its servers started first).
    pub fn agent(&self, host: &Netns, host_id: &str) -> anyhow::Result<Agent> {
        let token = self.rig.create_join_token(host_id, AgentKind::Shared)?;
        self.rig.start_agent(
            host,
            AgentSpec {
                token,
                ..AgentSpec::default()
            },
        )
    }

    /// Calls `agent` from the client namespace as the controller does.
    pub fn call<T: Send>(
        &self,
        agent: &Agent,
        call: impl AsyncFnOnce(&mut AgentClient<tonic::transport::Channel>) -> Result<T, tonic::Status>
        + Send,
    ) -> anyhow::Result<Result<T, tonic::Status>> {
        self.rig.client().run_in(|| async {
            let channel = agent.controller_channel(&self.controller)?;
            let mut client = AgentClient::new(channel);
            Ok(call(&mut client).await)
        })
    }
}
