//! The operator API: hosts, pools, join tokens. What a host is (kind, pool,
//! class) and whether it may act at all (`RemoveHost`) are decided here, by
//! operators, with who did it kept in the host's audit trail.

use std::pin::Pin;
use std::sync::Arc;

use navette_proto::gate::caller;
use navette_proto::v1;
use navette_proto::v1::host_event::Kind as EventKind;
use navette_proto::v1::host_pools_server::HostPools;
use navette_proto::v1::hosts_server::Hosts;
use navette_proto::v1::join_tokens_server::JoinTokens;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Reply, convert, reply, status};
use crate::agents;
use crate::db::Change;
use crate::enrolment;
use crate::error::Error;
use crate::ids::{self, HostId, JoinTokenId, PoolName, RequestId};
use crate::model::HostChange;
use crate::state::Controller;
use crate::store;

pub struct OperatorApi(pub Arc<Controller>);

type HostEvents = Pin<Box<dyn Stream<Item = Result<v1::HostEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Hosts for OperatorApi {
    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Reply<v1::ListHostsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let kind = convert::host_kind_from(request.kind)?;
                let pool = ids::optional("pool", &request.pool, PoolName::parse)?;
                let client = self.0.db.get().await?;
                let hosts = store::hosts::list(&**client, kind, pool.as_deref()).await?;
                Ok(v1::ListHostsResponse {
                    hosts: shown(&**client, &hosts).await?,
                })
            }
            .await,
        )
    }

    async fn get_host(&self, request: Request<v1::GetHostRequest>) -> Reply<v1::Host> {
        let request = request.into_inner();
        reply(
            async {
                let id = HostId::parse("id", &request.id)?;
                let client = self.0.db.get().await?;
                shown_one(&**client, &store::hosts::get(&**client, &id).await?).await
            }
            .await,
        )
    }

    async fn drain_host(&self, request: Request<v1::DrainHostRequest>) -> Reply<v1::Host> {
        let request = request.into_inner();
        reply(self.set_draining(&request.id, true).await)
    }

    async fn undrain_host(&self, request: Request<v1::UndrainHostRequest>) -> Reply<v1::Host> {
        let request = request.into_inner();
        reply(self.set_draining(&request.id, false).await)
    }

    async fn refresh_host_inventory(
        &self,
        request: Request<v1::RefreshHostInventoryRequest>,
    ) -> Reply<v1::Host> {
        let request = request.into_inner();
        reply(
            async {
                let id = HostId::parse("id", &request.id)?;
                let host = {
                    let client = self.0.db.get().await?;
                    store::hosts::get(&**client, &id).await?
                };
                let inventory = agents::get_inventory(&self.0, &host).await?;
                let client = self.0.db.get().await?;
                store::hosts::store_inventory(&**client, &id, &inventory).await?;
                shown_one(&**client, &store::hosts::get(&**client, &id).await?).await
            }
            .await,
        )
    }

    type WatchHostsStream = HostEvents;

    async fn watch_hosts(&self, request: Request<v1::WatchHostsRequest>) -> Reply<HostEvents> {
        let filter = ids::optional("id", &request.get_ref().id, HostId::parse)
            .map_err(|e| status(e.into()))?
            .map(HostId::into_string);
        let changes = self.0.changes.subscribe();
        let (sender, receiver) = mpsc::channel(64);
        let controller = self.0.clone();
        // Snapshot first (after subscribing, so nothing falls in between).
        let snapshot = {
            let client = controller.db.get().await.map_err(|e| status(e.into()))?;
            let hosts = store::hosts::list(&**client, None, None)
                .await
                .map_err(status)?;
            let watched = hosts
                .into_iter()
                .filter(|h| filter.as_deref().is_none_or(|id| id == h.id))
                .collect::<Vec<_>>();
            shown(&**client, &watched).await.map_err(status)?
        };
        if let Some(id) = &filter
            && snapshot.is_empty()
        {
            return Err(status(Error::NotFound {
                what: "host",
                id: id.clone(),
            }));
        }
        tokio::spawn(forward_host_events(
            controller, filter, snapshot, changes, sender,
        ));
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream) as HostEvents))
    }

    async fn set_host_class(&self, request: Request<v1::SetHostClassRequest>) -> Reply<v1::Host> {
        let actor = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let id = HostId::parse("id", &request.id)?;
                let pool = ids::optional("pool", &request.pool, PoolName::parse)?;
                let change = store::hosts::ClassChange {
                    kind: convert::host_kind_from(request.kind)?,
                    pool: pool.as_deref(),
                    declared_disk_bytes: ids::declared_disk_bytes(
                        "declared_disk_bytes",
                        request.declared_disk_bytes,
                    )?,
                };
                let mut client = self.0.db.get().await?;
                let transaction = client.transaction().await?;
                if let Some(name) = change.pool
                    && !store::pools::exists(&*transaction, name).await?
                {
                    return Err(Error::FailedPrecondition(format!(
                        "host pool {name:?} does not exist; create it first (HostPools/CreateHostPool)"
                    )));
                }
                let host = store::hosts::set_class(&*transaction, &id, &change, &actor).await?;
                let shown = shown_one(&*transaction, &host).await?;
                transaction.commit().await?;
                tracing::info!(message = "host class set", host_id = %id, kind = ?host.kind, pool = ?host.pool, declared_disk_bytes = ?host.declared_disk_bytes, %actor);
                Ok(shown)
            }
            .await,
        )
    }

    async fn remove_host(&self, request: Request<v1::RemoveHostRequest>) -> Reply<v1::Host> {
        let actor = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let id = HostId::parse("id", &request.id)?;
                let reason = ids::text("reason", &request.reason)?;
                if reason.is_empty() {
                    return Err(Error::InvalidArgument(
                        "reason is required: say why the host is removed (it is kept with the revocation)"
                            .to_owned(),
                    ));
                }
                let mut client = self.0.db.get().await?;
                let transaction = client.transaction().await?;
                let host = store::hosts::remove(&*transaction, &id, &actor, reason).await?;
                let shown = shown_one(&*transaction, &host).await?;
                transaction.commit().await?;
                // This controller refuses the certificates at once, without
                // waiting for its own notification.
                self.0.certificates.forget(&id);
                tracing::warn!(message = "host removed; its certificates are revoked", host_id = %id, %actor, %reason);
                Ok(shown)
            }
            .await,
        )
    }
}

/// The hosts as the API shows them, each with its configuration class.
async fn shown(
    client: &impl tokio_postgres::GenericClient,
    hosts: &[crate::model::Host],
) -> Result<Vec<v1::Host>, Error> {
    let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    let classes = store::transit::host_classes(client, &ids).await?;
    Ok(hosts
        .iter()
        .map(|h| convert::host_of_class(h, classes.get(&h.id).map(String::as_str)))
        .collect())
}

async fn shown_one(
    client: &impl tokio_postgres::GenericClient,
    host: &crate::model::Host,
) -> Result<v1::Host, Error> {
    let mut shown = shown(client, std::slice::from_ref(host)).await?;
    shown
        .pop()
        .ok_or_else(|| Error::Internal(format!("host {} vanished while shown", host.id)))
}

fn event(kind: EventKind, host: v1::Host) -> v1::HostEvent {
    v1::HostEvent {
        kind: kind.into(),
        host: Some(host),
        at: Some(navette_proto::timestamp(chrono::Utc::now())),
    }
}

fn event_kind(change: HostChange) -> EventKind {
    match change {
        HostChange::Enrolled => EventKind::Enrolled,
        HostChange::Online => EventKind::Online,
        HostChange::Unreachable => EventKind::Unreachable,
        HostChange::Inventory => EventKind::Inventory,
        HostChange::Draining => EventKind::Draining,
        HostChange::Undrained => EventKind::Undrained,
        HostChange::Certificate => EventKind::Certificate,
        HostChange::Reclassified => EventKind::Reclassified,
        HostChange::Removed => EventKind::Removed,
    }
}

/// Sends the snapshot, then one event per committed change, until the
/// watcher hangs up.
async fn forward_host_events(
    controller: Arc<Controller>,
    filter: Option<String>,
    snapshot: Vec<v1::Host>,
    mut changes: broadcast::Receiver<Change>,
    sender: mpsc::Sender<Result<v1::HostEvent, Status>>,
) {
    for host in snapshot {
        if sender
            .send(Ok(event(EventKind::Snapshot, host)))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        let note = match changes.recv().await {
            Ok(Change::Notified { channel, payload }) if channel == "navette_hosts" => payload,
            Ok(Change::Notified { .. }) => continue,
            Ok(Change::Resynchronise) | Err(broadcast::error::RecvError::Lagged(_)) => {
                String::new()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (host_id, change) = note.split_once(':').unwrap_or(("", ""));
        let (ids, kind) = match HostChange::parse(change) {
            Some(change) if !host_id.is_empty() => (Some(host_id.to_owned()), event_kind(change)),
            // A resynchronisation: send every watched host again.
            _ => (None, EventKind::Snapshot),
        };
        if let (Some(id), Some(wanted)) = (&ids, &filter)
            && id != wanted
        {
            continue;
        }
        let hosts = match controller.db.get().await {
            Ok(client) => {
                let hosts = match &ids {
                    Some(id) => store::hosts::get(&**client, id).await.map(|h| vec![h]),
                    None => store::hosts::list(&**client, None, None).await,
                };
                match hosts {
                    Ok(hosts) => {
                        let watched: Vec<_> = hosts
                            .into_iter()
                            .filter(|h| filter.as_deref().is_none_or(|id| id == h.id))
                            .collect();
                        shown(&**client, &watched).await
                    }
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error.into()),
        };
        match hosts {
            Ok(hosts) => {
                for host in hosts {
                    if sender.send(Ok(event(kind, host))).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                let _ = sender.send(Err(status(error))).await;
                return;
            }
        }
    }
}

impl OperatorApi {
    async fn set_draining(&self, id: &str, draining: bool) -> Result<v1::Host, Error> {
        let id = HostId::parse("id", id)?;
        let client = self.0.db.get().await?;
        let host = store::hosts::set_draining(&**client, &id, draining).await?;
        tracing::info!(message = if draining { "host draining" } else { "host undrained" }, host_id = %id);
        shown_one(&**client, &host).await
    }
}

#[tonic::async_trait]
impl HostPools for OperatorApi {
    async fn create_host_pool(
        &self,
        request: Request<v1::CreateHostPoolRequest>,
    ) -> Reply<v1::HostPool> {
        let request = request.into_inner();
        reply(
            async {
                let request_id = RequestId::parse("request_id", &request.request_id)?;
                let name = PoolName::parse("name", &request.name)?;
                let description = ids::text("description", &request.description)?;
                let client = self.0.db.get().await?;
                let pool = store::pools::create(&**client, &request_id, &name, description).await?;
                Ok(convert::host_pool(&pool))
            }
            .await,
        )
    }

    async fn list_host_pools(
        &self,
        _request: Request<v1::ListHostPoolsRequest>,
    ) -> Reply<v1::ListHostPoolsResponse> {
        reply(
            async {
                let client = self.0.db.get().await?;
                let pools = store::pools::list(&**client).await?;
                Ok(v1::ListHostPoolsResponse {
                    pools: pools.iter().map(convert::host_pool).collect(),
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl JoinTokens for OperatorApi {
    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Reply<v1::CreateJoinTokenResponse> {
        let created_by = caller(&request)?.name.clone();
        let request = request.into_inner();
        let controller = &self.0;
        reply(async {
            if request.request_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "request_id is required: choose a unique id per token so that a retried call does not create two"
                        .to_owned(),
                ));
            }
            let request_id = RequestId::parse("request_id", &request.request_id)?;
            let host_id = HostId::parse("host_id", &request.host_id)?;
            let pool = ids::optional("pool", &request.pool, PoolName::parse)?;
            let ttl = ids::ttl_seconds(
                "ttl_seconds",
                request.ttl_seconds,
                controller.config.hosts.join_token_ttl_secs,
                ids::MAX_JOIN_TOKEN_TTL_SECS,
            )?;
            let (token, secret) = enrolment::create_join_token(
                &controller.db,
                &controller.ca,
                &enrolment::TokenRequest {
                    request_id: &request_id,
                    host_id: &host_id,
                    pool: pool.as_deref(),
                    kind: convert::host_kind_from(request.kind)?,
                    declared_disk_bytes: ids::declared_disk_bytes(
                        "declared_disk_bytes",
                        request.declared_disk_bytes,
                    )?,
                    created_by: &created_by,
                    ttl_secs: ttl,
                },
            )
            .await?;
            tracing::info!(message = "join token created", token = %token.id, %host_id, expires_at = %token.expires_at);
            Ok(v1::CreateJoinTokenResponse {
                token: Some(convert::join_token(&token)),
                secret,
            })
        }
        .await)
    }

    async fn list_join_tokens(
        &self,
        _request: Request<v1::ListJoinTokensRequest>,
    ) -> Reply<v1::ListJoinTokensResponse> {
        reply(
            async {
                let client = self.0.db.get().await?;
                let tokens = store::tokens::list(&**client).await?;
                Ok(v1::ListJoinTokensResponse {
                    tokens: tokens.iter().map(convert::join_token).collect(),
                })
            }
            .await,
        )
    }

    async fn revoke_join_token(
        &self,
        request: Request<v1::RevokeJoinTokenRequest>,
    ) -> Reply<v1::JoinToken> {
        let request = request.into_inner();
        reply(
            async {
                let id = JoinTokenId::parse("id", &request.id)?;
                let client = self.0.db.get().await?;
                Ok(convert::join_token(
                    &store::tokens::revoke(&**client, &id).await?,
                ))
            }
            .await,
        )
    }
}
