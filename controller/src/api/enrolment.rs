//! The enrolment service, alone on the listener that needs no client
//! certificate: a join token and a CSR buy an agent certificate.

use std::sync::Arc;
use std::time::Duration;

use navette_proto::v1;
use navette_proto::v1::enrolment_server::Enrolment;
use tonic::Request;

use super::{Reply, reply};
use crate::enrolment;
use crate::ids;
use crate::state::Controller;

pub struct EnrolmentApi(pub Arc<Controller>);

#[tonic::async_trait]
impl Enrolment for EnrolmentApi {
    async fn enrol(&self, request: Request<v1::EnrolRequest>) -> Reply<v1::CertificateBundle> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let controller = &self.0;
        let result = async {
            let token = ids::join_token_secret("token", &request.token)?;
            let csr = ids::csr_pem("csr_pem", &request.csr_pem)?;
            let lifetime = Duration::from_secs(controller.config.tls.agent_certificate_ttl_secs);
            let (host_id, issued) =
                enrolment::enrol(&controller.db, &controller.ca, token, csr, lifetime).await?;
            Ok(v1::CertificateBundle {
                host_id,
                certificate_pem: issued.certificate_pem,
                ca_certificate_pem: controller.ca.certificate_pem().to_owned(),
                not_after: Some(navette_proto::timestamp(issued.not_after)),
            })
        }
        .await;
        if let Err(error) = &result {
            tracing::warn!(message = "enrolment refused", peer = ?peer, %error);
        }
        reply(result)
    }
}
