//! The agent gateway: heartbeats, inventories and certificate renewal from
//! agents. An agent speaks only for the host in its certificate, and only
//! with its host's current certificate (checked before any handler, by
//! `policy::AgentCertificateLayer`). Each heartbeat's answer carries the
//! serials agents must refuse on their peer ports.

use std::sync::Arc;
use std::time::Duration;

use navette_proto::gate::caller_role;
use navette_proto::identity::Role;
use navette_proto::v1;
use navette_proto::v1::agent_gateway_server::AgentGateway;
use tonic::{Request, Status};

use super::policy::PresentedCertificate;
use super::{Reply, convert, reply, status};
use crate::enrolment;
use crate::error::Error;
use crate::ids::{self, HostId};
use crate::state::Controller;
use crate::store;

pub struct GatewayApi(pub Arc<Controller>);

/// The host id of the calling agent, which must be the one the request
/// speaks for (an empty `claimed` means "mine").
fn calling_host<T>(request: &Request<T>, claimed: &str) -> Result<String, Status> {
    if !claimed.is_empty() {
        HostId::parse("host_id", claimed).map_err(|e| status(e.into()))?;
    }
    match caller_role(request)? {
        Role::Agent { host_id } if claimed.is_empty() || claimed == host_id => Ok(host_id.clone()),
        Role::Agent { host_id } => Err(status(Error::PermissionDenied(format!(
            "the agent of host {host_id} may not speak for host {claimed}"
        )))),
        other => Err(status(Error::PermissionDenied(format!(
            "the agent gateway is for agents; the caller is {other}"
        )))),
    }
}

#[tonic::async_trait]
impl AgentGateway for GatewayApi {
    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Reply<v1::HeartbeatResponse> {
        let host_id = calling_host(&request, &request.get_ref().host_id)?;
        let request = request.into_inner();
        reply(
            async {
                let endpoint = ids::agent_endpoint("agent_endpoint", &request.agent_endpoint)?;
                let digest = ids::digest("inventory_digest", &request.inventory_digest)?;
                let client = self.0.db.get().await?;
                let outcome =
                    store::hosts::record_heartbeat(&**client, &host_id, endpoint, digest).await?;
                let lists = self.0.certificates.peer_lists(&self.0.db).await?;
                Ok(v1::HeartbeatResponse {
                    send_inventory: outcome.send_inventory,
                    server_time: Some(navette_proto::timestamp(chrono::Utc::now())),
                    refused_certificate_serials: lists.refused.clone(),
                    renewed_certificate_serials: lists.renewed.clone(),
                })
            }
            .await,
        )
    }

    async fn report_inventory(
        &self,
        request: Request<v1::HostInventory>,
    ) -> Reply<v1::ReportInventoryResponse> {
        let host_id = calling_host(&request, &request.get_ref().host_id)?;
        let mut report = request.into_inner();
        report.host_id = host_id.clone();
        reply(async {
            let inventory = convert::inventory_from(&report)?;
            let mut client = self.0.db.get().await?;
            let transaction = client.transaction().await?;
            store::hosts::store_inventory(&*transaction, &host_id, &inventory).await?;
            transaction.commit().await?;
            tracing::debug!(message = "inventory stored", %host_id, accounts = inventory.accounts.len());
            Ok(v1::ReportInventoryResponse {})
        }
        .await)
    }

    async fn renew_certificate(
        &self,
        request: Request<v1::RenewCertificateRequest>,
    ) -> Reply<v1::CertificateBundle> {
        let host_id = calling_host(&request, "")?;
        let presented = request
            .extensions()
            .get::<PresentedCertificate>()
            .map(|certificate| certificate.serial.clone())
            .ok_or_else(|| {
                Status::unauthenticated("the agent's certificate was not checked; call again")
            })?;
        let request = request.into_inner();
        let controller = &self.0;
        reply(
            async {
                let csr = ids::csr_pem("csr_pem", &request.csr_pem)?;
                let lifetime =
                    Duration::from_secs(controller.config.tls.agent_certificate_ttl_secs);
                let issued = enrolment::renew(
                    &controller.db,
                    &controller.ca,
                    &host_id,
                    &presented,
                    csr,
                    lifetime,
                )
                .await?;
                Ok(v1::CertificateBundle {
                    host_id,
                    certificate_pem: issued.certificate_pem,
                    ca_certificate_pem: controller.ca.certificate_pem().to_owned(),
                    not_after: Some(navette_proto::timestamp(issued.not_after)),
                })
            }
            .await,
        )
    }
}
