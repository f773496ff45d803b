//! The panel API: catalogue and accounts.

use std::sync::Arc;

use navette_proto::v1;
use navette_proto::v1::accounts_server::Accounts;
use navette_proto::v1::catalogue_server::Catalogue;
use tonic::Request;

use super::{Reply, convert, reply};
use crate::error::Error;
use crate::ids::{self, AccountName, HostId, MigrationId};
use crate::state::Controller;
use crate::store;

pub struct PanelApi(pub Arc<Controller>);

#[tonic::async_trait]
impl Catalogue for PanelApi {
    async fn list_migrations(
        &self,
        request: Request<v1::ListMigrationsRequest>,
    ) -> Reply<v1::ListMigrationsResponse> {
        let request = request.into_inner();
        let controller = &self.0;
        reply(
            async {
                let catalogue = &controller.catalogue;
                let account = ids::optional("account", &request.account, AccountName::parse)?;
                let host_id = ids::optional("host_id", &request.host_id, HostId::parse)?;
                let migrations = match (account, host_id) {
                    (Some(_), Some(_)) => {
                        return Err(Error::InvalidArgument(
                            "give an account or a host_id, not both".to_owned(),
                        ));
                    }
                    (Some(name), None) => {
                        let client = controller.db.get().await?;
                        let account = store::accounts::get(&**client, &name).await?;
                        let host = store::hosts::get(&**client, &account.host_id).await?;
                        catalogue
                            .for_account(&account, &host)
                            .map(convert::migration)
                            .collect()
                    }
                    (None, Some(host_id)) => {
                        let client = controller.db.get().await?;
                        let host = store::hosts::get(&**client, &host_id).await?;
                        catalogue.for_host(&host).map(convert::migration).collect()
                    }
                    (None, None) => catalogue.all().map(convert::migration).collect(),
                };
                Ok(v1::ListMigrationsResponse { migrations })
            }
            .await,
        )
    }

    async fn get_migration(
        &self,
        request: Request<v1::GetMigrationRequest>,
    ) -> Reply<v1::Migration> {
        let request = request.into_inner();
        reply(
            MigrationId::parse("id", &request.id)
                .map_err(Error::from)
                .and_then(|id| {
                    self.0
                        .catalogue
                        .get(&id)
                        .map(convert::migration)
                        .ok_or_else(|| Error::NotFound {
                            what: "migration",
                            id: id.to_string(),
                        })
                }),
        )
    }
}

#[tonic::async_trait]
impl Accounts for PanelApi {
    async fn list_accounts(
        &self,
        request: Request<v1::ListAccountsRequest>,
    ) -> Reply<v1::ListAccountsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let host = ids::optional("host_id", &request.host_id, HostId::parse)?;
                let host = host.as_deref();
                let client = self.0.db.get().await?;
                let accounts = store::accounts::list(&**client, host).await?;
                let copies = store::accounts::list_copies(&**client, host).await?;
                Ok(v1::ListAccountsResponse {
                    accounts: accounts.iter().map(convert::account).collect(),
                    copies: copies.iter().map(convert::account).collect(),
                })
            }
            .await,
        )
    }

    async fn get_account(&self, request: Request<v1::GetAccountRequest>) -> Reply<v1::Account> {
        let request = request.into_inner();
        reply(
            async {
                let name = AccountName::parse("name", &request.name)?;
                let client = self.0.db.get().await?;
                Ok(convert::account(
                    &store::accounts::get(&**client, &name).await?,
                ))
            }
            .await,
        )
    }
}
