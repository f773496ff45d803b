//! The panel's Tests service (R3) and the compatibility report (R2, made
//! by `crate::compatibility`): test runs of a migration, started,
//! followed, refreshed and deleted. Every field is parsed by `crate::ids`
//! before anything else happens.

use std::sync::Arc;

use navette_proto::v1;
use navette_proto::v1::tests_server::Tests;
use ring::rand::SecureRandom;
use tonic::{Request, Response};

use super::watch::{WatchStream, watch};
use super::{Reply, convert, reply, status};
use crate::agents;
use crate::catalogue::Migration;
use crate::compatibility;
use crate::error::{Error, Result};
use crate::ids::{self, AccountName, MigrationId, RequestId, TestId};
use crate::model::{Account, CopyPlan, Host, HostState, Test, TestState};
use crate::placement;
use crate::state::Controller;
use crate::store;

/// How long a report or a test waits for the account's host to measure
/// the home now before it uses the last measurement.
const MEASURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a test copy lives unless the request says otherwise.
pub const DEFAULT_TTL_SECS: u64 = 7 * 86_400;
/// The longest a request may ask a test copy to live
/// (`TestMigrationRequest.ttl_seconds`).
pub const MAX_TTL_SECS: u32 = ids::MAX_TEST_TTL_SECS;

pub struct TestsApi(pub Arc<Controller>);

type TestStream = WatchStream<v1::Test>;

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!(
        "t{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl TestsApi {
    /// The account, its host, the migration, and every host, checked.
    /// Asks the account's host for its inventory with the account's home
    /// measured now, and stores it: a report, and the room a copy needs,
    /// count what the home holds today, not at the last periodic walk. A
    /// host that does not answer within [`MEASURE_TIMEOUT`] leaves the
    /// stored inventory as it is. Whether a new inventory was stored.
    async fn measure_now(&self, account: &Account, source: &Host) -> bool {
        if source.state != HostState::Online {
            return false;
        }
        let asked = tokio::time::timeout(
            MEASURE_TIMEOUT,
            agents::get_inventory_measuring(&self.0, source, &[&account.name]),
        )
        .await;
        let stored = match asked {
            Ok(Ok(inventory)) => match self.0.db.get().await {
                Ok(client) => store::hosts::store_inventory(&**client, &source.id, &inventory)
                    .await
                    .map(drop),
                Err(error) => Err(error.into()),
            },
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Unavailable(format!(
                "host {} did not measure the home within {} s",
                source.id,
                MEASURE_TIMEOUT.as_secs()
            ))),
        };
        match stored {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(message = "the account's home was not measured now; its last measurement is used", account = %account.name, host = %source.id, %error);
                false
            }
        }
    }

    async fn context(
        &self,
        account: &AccountName,
        migration_id: &MigrationId,
    ) -> Result<(Account, Host, Migration, Vec<Host>, Vec<Account>)> {
        let migration =
            self.0
                .catalogue
                .get(migration_id)
                .cloned()
                .ok_or_else(|| Error::NotFound {
                    what: "migration",
                    id: migration_id.to_string(),
                })?;
        let client = self.0.db.get().await?;
        let stored = store::accounts::get(&**client, account).await?;
        let source = store::hosts::get(&**client, &stored.host_id).await?;
        // No connection is held while the host measures (up to 10 s).
        drop(client);
        let measured = self.measure_now(&stored, &source).await;
        let client = self.0.db.get().await?;
        let (account, source) = if measured {
            let account = store::accounts::get(&**client, account).await?;
            let source = store::hosts::get(&**client, &account.host_id).await?;
            (account, source)
        } else {
            (stored, source)
        };
        if !migration.applies_to_account(&account, &source) {
            return Err(Error::FailedPrecondition(format!(
                "migration {} does not apply to account {}: it moves {} {} to {}, and the account uses none (see Catalogue/ListMigrations for the account)",
                migration.id,
                account.name,
                migration.source.software.as_str(),
                migration.source.versions.join("/"),
                migration.target.versions.join("")
            )));
        }
        let hosts = store::hosts::list(&**client, None, None).await?;
        // What every host holds, accounts and copies (reported, or planned
        // by live tests): placement keeps a copy off a server where another
        // account's names are.
        let mut held = store::accounts::list(&**client, None).await?;
        held.extend(store::accounts::list_copies(&**client, None).await?);
        held.extend(store::accounts::planned_copies(&**client).await?);
        Ok((account, source, migration, hosts, held))
    }

    /// What a refresh of test `id` copies: the account's databases as its
    /// host reports them now (measured now, like a new test), placed on
    /// the test host by `placement::replan_test`. `None` for a test that
    /// is not ready: the refresh is refused by the test's own rules.
    async fn refresh_plan(&self, id: &TestId) -> Result<Option<CopyPlan>> {
        let test = {
            let client = self.0.db.get().await?;
            store::test_runs::get(&**client, id).await?
        };
        if test.state != TestState::Ready {
            return Ok(None);
        }
        let account = AccountName::parse("account", &test.account)?;
        let migration = MigrationId::parse("migration_id", &test.migration_id)?;
        let (account, source, migration, hosts, held) = self.context(&account, &migration).await?;
        let test_host = hosts
            .iter()
            .find(|host| host.id == test.test_host_id)
            .ok_or_else(|| Error::NotFound {
                what: "host",
                id: test.test_host_id.clone(),
            })?;
        placement::replan_test(&migration, &account, &source, test_host, &held, &test.plan)
            .map(Some)
    }

    async fn create(&self, request: v1::TestMigrationRequest) -> Result<Test> {
        let request_id = RequestId::parse("request_id", &request.request_id)?;
        let account_name = AccountName::parse("account", &request.account)?;
        let migration_id = MigrationId::parse("migration_id", &request.migration_id)?;
        let ttl = ids::ttl_seconds(
            "ttl_seconds",
            request.ttl_seconds,
            DEFAULT_TTL_SECS,
            MAX_TTL_SECS,
        )?;
        {
            let client = self.0.db.get().await?;
            if let Some(existing) = store::test_runs::by_request_id(&**client, &request_id).await? {
                if existing.account != *account_name || existing.migration_id != *migration_id {
                    return Err(Error::AlreadyExists(format!(
                        "request id {request_id:?} already started test {} of {} for {}; use a new request id",
                        existing.id, existing.migration_id, existing.account
                    )));
                }
                return Ok(existing);
            }
        }
        let (account, source, migration, hosts, held) =
            self.context(&account_name, &migration_id).await?;
        let blocking = compatibility::blocking_findings(&migration, &account, &source, &hosts);
        if !blocking.is_empty() {
            let reasons: Vec<&str> = blocking.iter().map(|f| f.message.as_str()).collect();
            return Err(Error::FailedPrecondition(format!(
                "a test of {} for {} cannot succeed: {} (see Tests/GetCompatibilityReport)",
                migration.id,
                account.name,
                reasons.join("; ")
            )));
        }
        let (test_host, plan) = placement::plan_test(&migration, &account, &source, &hosts, &held)?;
        let id = new_id();
        let mut client = self.0.db.get().await?;
        let created = crate::workflow::test_events::create(
            &mut client,
            &store::test_runs::NewTest {
                id: &id,
                request_id: &request_id,
                account: &account.name,
                migration_id: &migration.id,
                source_host_id: &source.id,
                test_host_id: &test_host.id,
                plan: &plan,
                ttl_seconds: ttl,
            },
        )
        .await?;
        match created {
            Some(test) => {
                tracing::info!(message = "test started", test_id = %test.id, account = %test.account, migration = %test.migration_id, test_host = %test.test_host_id);
                Ok(test)
            }
            // Lost a race with a retry of the same request.
            None => store::test_runs::by_request_id(&**client, &request_id)
                .await?
                .ok_or_else(|| Error::Internal("test vanished".to_owned())),
        }
    }

    async fn report(
        &self,
        account: &AccountName,
        migration_id: &MigrationId,
    ) -> Result<v1::CompatibilityReport> {
        let (account, source, migration, hosts, held) = self.context(account, migration_id).await?;
        Ok(convert::compatibility_report(&compatibility::report(
            &migration, &account, &source, &hosts, &held,
        )))
    }
}

#[tonic::async_trait]
impl Tests for TestsApi {
    async fn test_migration(&self, request: Request<v1::TestMigrationRequest>) -> Reply<v1::Test> {
        reply(
            self.create(request.into_inner())
                .await
                .map(|t| convert::test(&t)),
        )
    }

    async fn get_test(&self, request: Request<v1::GetTestRequest>) -> Reply<v1::Test> {
        let request = request.into_inner();
        reply(
            async {
                let id = TestId::parse("id", &request.id)?;
                let client = self.0.db.get().await?;
                Ok(convert::test(&store::test_runs::get(&**client, &id).await?))
            }
            .await,
        )
    }

    async fn list_tests(
        &self,
        request: Request<v1::ListTestsRequest>,
    ) -> Reply<v1::ListTestsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let account = ids::optional("account", &request.account, AccountName::parse)?;
                let client = self.0.db.get().await?;
                let tests = store::test_runs::list(&**client, account.as_deref()).await?;
                Ok(v1::ListTestsResponse {
                    tests: tests.iter().map(convert::test).collect(),
                })
            }
            .await,
        )
    }

    async fn refresh_test(&self, request: Request<v1::RefreshTestRequest>) -> Reply<v1::Test> {
        let request = request.into_inner();
        reply(async {
            let id = TestId::parse("id", &request.id)?;
            let plan = self.refresh_plan(&id).await?;
            let mut client = self.0.db.get().await?;
            let test = crate::workflow::test_events::refresh(&mut client, &id, plan).await?;
            tracing::info!(message = "test refresh started", test_id = %id, generation = test.generation);
            Ok(convert::test(&test))
        }
        .await)
    }

    async fn delete_test(&self, request: Request<v1::DeleteTestRequest>) -> Reply<v1::Test> {
        let request = request.into_inner();
        reply(
            async {
                let id = TestId::parse("id", &request.id)?;
                let mut client = self.0.db.get().await?;
                let test = crate::workflow::test_events::delete(&mut client, &id).await?;
                tracing::info!(message = "test deletion started", test_id = %id);
                Ok(convert::test(&test))
            }
            .await,
        )
    }

    type WatchTestStream = TestStream;

    async fn watch_test(&self, request: Request<v1::WatchTestRequest>) -> Reply<TestStream> {
        let id = TestId::parse("id", &request.get_ref().id)
            .map_err(|e| status(e.into()))?
            .to_string();
        let stream = watch(
            self.0.clone(),
            id,
            "navette_tests",
            |controller: Arc<Controller>, id: String| async move {
                let client = controller.db.get().await?;
                store::test_runs::get(&**client, &id).await
            },
            convert::test,
            |test: &Test| {
                matches!(
                    test.state,
                    TestState::Ready | TestState::Failed | TestState::Deleted
                ) && test.step == crate::model::TestStep::None
            },
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn get_compatibility_report(
        &self,
        request: Request<v1::GetCompatibilityReportRequest>,
    ) -> Reply<v1::CompatibilityReport> {
        let request = request.into_inner();
        reply(
            async {
                let account = AccountName::parse("account", &request.account)?;
                let migration = MigrationId::parse("migration_id", &request.migration_id)?;
                self.report(&account, &migration).await
            }
            .await,
        )
    }
}
