//! What a migration is, as its workflow remembers it ([`MigrationRun`],
//! stored in `workflows.state` and projected to the `migrations` row): its
//! state and step, what the source prepared, where the copy's snapshots
//! were read, the last backlog measured, and every freeze tried, with the
//! time each part of it took. Plain data: the decisions are in
//! [`super::migrate_kind`], the effects in [`super::migrate_steps`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agents::cutover::JournalMark;
use crate::agents::verify::{MariadbRowsMark, RowsMark};
use crate::config;
use crate::dns::{AccountRecords, TtlLowering};
use crate::model::{CopyPlan, CopyProgress};

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateState {
    /// The source's publication and slots, and the copy's grant.
    Preparing,
    /// The durable copy runs while the account works.
    Copying,
    /// Replication from the source to the copy is being set up.
    Replicating,
    /// Changes flow until the backlog is small enough to freeze.
    Converging,
    /// The account is frozen on its host; the switch follows.
    Freezing,
    /// Past the point of no return: the account lives on the target.
    Switched,
    /// The old copy is retired; nothing is left to do.
    Completed,
    /// A failure or a cancel before the point of no return is undone.
    RollingBack,
    /// Rolled back after a failure.
    Failed,
    /// Rolled back after a cancel.
    Cancelled,
}

impl MigrateState {
    /// `migrations.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrateState::Preparing => "preparing",
            MigrateState::Copying => "copying",
            MigrateState::Replicating => "replicating",
            MigrateState::Converging => "converging",
            MigrateState::Freezing => "freezing",
            MigrateState::Switched => "switched",
            MigrateState::Completed => "completed",
            MigrateState::RollingBack => "rolling_back",
            MigrateState::Failed => "failed",
            MigrateState::Cancelled => "cancelled",
        }
    }

    /// Whether the migration is over.
    pub fn ended(self) -> bool {
        matches!(
            self,
            MigrateState::Completed | MigrateState::Failed | MigrateState::Cancelled
        )
    }
}

/// The steps of a migration, in order; [`MigrateStep::Rollback`] undoes
/// everything before the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateStep {
    /// Source: PostgreSQL publications and slots (tables without a key
    /// given REPLICA IDENTITY FULL), MariaDB binlog readiness; the grant.
    Prepare,
    /// Target: the durable copy, PostgreSQL from the slots' snapshots,
    /// MariaDB with each snapshot's GTID position.
    Copy,
    /// Subscriptions and replication connections on the target.
    Replicate,
    /// Measures the backlog.
    Converge,
    /// Freezes the account's sites, fences and drains its databases,
    /// carries its sequences and the last file changes; thaws and says so
    /// when its deadline is missed.
    Freeze,
    /// The point of no return: the sites start on the target, the
    /// placement is recorded, the old sites stop.
    Switch,
    /// After the switch: replication torn down, the old host's sessions
    /// and grants ended.
    Finish,
    /// At the end of the grace period: the old copy retired.
    Retire,
    /// Once the old DNS records' TTL has passed since their switch: the
    /// old host's forward to the new host ended.
    Unforward,
    /// Before the point of no return: the source thawed, replication torn
    /// down, the target's partial copy removed.
    Rollback,
    /// Nothing to run (waiting for the grace period, or over).
    None,
}

impl MigrateStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrateStep::Prepare => "prepare",
            MigrateStep::Copy => "copy",
            MigrateStep::Replicate => "replicate",
            MigrateStep::Converge => "converge",
            MigrateStep::Freeze => "freeze",
            MigrateStep::Switch => "switch",
            MigrateStep::Finish => "finish",
            MigrateStep::Retire => "retire",
            MigrateStep::Unforward => "unforward",
            MigrateStep::Rollback => "rollback",
            MigrateStep::None => "none",
        }
    }
}

/// The settings a migration runs with, taken from `[migrations]` when it
/// starts (a controller restarted with other settings does not change a
/// migration under way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateSettings {
    pub freeze_deadline_ms: u64,
    pub freeze_tries: u32,
    pub backlog_threshold_bytes: u64,
    pub backlog_threshold_transactions: u64,
    pub converge_poll_ms: u64,
    pub retire_after_secs: u64,
    /// Paths of the home changed and not yet carried (the change
    /// journal's backlog) under which the freeze may begin.
    #[serde(default = "default_backlog_paths")]
    pub backlog_threshold_paths: u64,
    /// How long the old host forwards after the switch when the platform's
    /// DNS does not say (no `[dns]`, or names of the customer's own DNS).
    #[serde(default = "default_forward_for")]
    pub forward_for_secs: u64,
}

/// The files' backlog a freeze may begin with: a journal pass costs what
/// changed, a few milliseconds per thousand paths.
pub const BACKLOG_THRESHOLD_PATHS: u64 = 2_000;

fn default_backlog_paths() -> u64 {
    BACKLOG_THRESHOLD_PATHS
}

fn default_forward_for() -> u64 {
    config::default_forward_for()
}

impl MigrateSettings {
    pub fn from_config(config: &config::Migrations) -> MigrateSettings {
        MigrateSettings {
            freeze_deadline_ms: config.freeze_deadline_ms,
            freeze_tries: config.freeze_tries.max(1),
            backlog_threshold_bytes: config.backlog_threshold_bytes,
            backlog_threshold_transactions: config.backlog_threshold_transactions,
            converge_poll_ms: config.converge_poll_ms.max(50),
            retire_after_secs: config.retire_after_secs,
            backlog_threshold_paths: BACKLOG_THRESHOLD_PATHS,
            forward_for_secs: config.forward_for_secs,
        }
    }

    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_millis(self.freeze_deadline_ms)
    }

    pub fn converge_poll(&self) -> Duration {
        Duration::from_millis(self.converge_poll_ms)
    }
}

/// What is left to carry, as measured on the source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// WAL bytes not yet applied on the target, over every database.
    pub postgres_lag_bytes: u64,
    /// MariaDB transactions not yet applied on the target.
    pub mariadb_transactions: u64,
    /// Paths of the home the change journal names and no pass carried yet.
    #[serde(default)]
    pub files_pending: u64,
    /// The last catch-up pass compared the whole tree (the journal could
    /// not be trusted): not a pass to freeze on, another follows.
    #[serde(default)]
    pub files_full_comparison: bool,
    /// What the next catch-up pass names; `None` before the first.
    #[serde(default)]
    pub journal: Option<JournalMark>,
    /// Where each PostgreSQL database's rows verification stands (by
    /// database name): what the next round reads from and checks again.
    #[serde(default)]
    pub rows: BTreeMap<String, RowsMark>,
    /// Where each source MariaDB server's rows verification stands (by
    /// source server name).
    #[serde(default)]
    pub mariadb_rows: BTreeMap<String, MariadbRowsMark>,
    /// Tables whose changed rows a round could not verify since the
    /// migration began, with why, each once (shown on the migration;
    /// carried all the same).
    #[serde(default)]
    pub unverified: Vec<String>,
    #[serde(with = "crate::model::rfc3339")]
    pub measured_at: DateTime<Utc>,
}

impl Backlog {
    /// Names a table whose rows were not verified, once.
    pub fn name_unverified(&mut self, table: String) {
        if !self.unverified.contains(&table) {
            self.unverified.push(table);
        }
    }

    /// WAL bytes the rows' verification has not read yet, over every
    /// database: the freeze's round reads them.
    pub fn rows_unread_bytes(&self) -> u64 {
        self.rows.values().map(|mark| mark.unread_bytes).sum()
    }

    /// Whether the freeze may begin with this backlog.
    pub fn below(&self, settings: &MigrateSettings) -> bool {
        self.postgres_lag_bytes <= settings.backlog_threshold_bytes
            && self.rows_unread_bytes() <= settings.backlog_threshold_bytes
            && self.mariadb_transactions <= settings.backlog_threshold_transactions
            && self.files_pending <= settings.backlog_threshold_paths
            && !self.files_full_comparison
    }
}

/// One part of a freeze and how long it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezePart {
    pub name: String,
    pub ms: u64,
}

/// A freeze: from the moment the account's first process was frozen to the
/// moment the new host accepted its first write (or, for one that missed
/// its deadline, to the moment the source was thawed again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindow {
    #[serde(with = "crate::model::rfc3339")]
    pub frozen_at: DateTime<Utc>,
    pub total_ms: u64,
    pub parts: Vec<FreezePart>,
    /// Why it was undone; empty for the freeze that switched.
    #[serde(default)]
    pub missed_because: String,
    /// The account's processes on the source were frozen (FreezeAccount):
    /// the switch forwards its sites and thaws it.
    #[serde(default)]
    pub sites_frozen: bool,
    /// Tables whose changed rows the freeze's verification could not
    /// check, with why.
    #[serde(default)]
    pub unverified: Vec<String>,
}

/// The platform DNS's records of the account, as read when the migration
/// began, and the TTL lowering made then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsPlan {
    pub records: AccountRecords,
    pub lowering: TtlLowering,
}

impl DnsPlan {
    /// The longest TTL a resolver may have cached the account's records
    /// with when they were switched (each set's TTL as lowered), in
    /// seconds; `None` when a name is outside the platform's zones (the
    /// customer's DNS says) or no set exists.
    pub fn switched_ttl_secs(&self) -> Option<u64> {
        if !self.records.not_ours.is_empty() {
            return None;
        }
        self.records
            .sets()
            .filter(|set| set.ttl > 0)
            .map(|set| u64::from(set.ttl.min(self.lowering.lowered_ttl)))
            .max()
    }

    /// Whether the lowered TTL can be relied on at `now`: no resolver
    /// holds an answer cached with an old TTL.
    pub fn safe_at(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(self.lowering.safe_at)
    }
}

/// A migration's whole record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationRun {
    pub id: String,
    pub request_id: String,
    pub account: String,
    /// The catalogue's migration.
    pub migration_id: String,
    pub source_host_id: String,
    pub target_host_id: String,
    pub plan: CopyPlan,
    pub settings: MigrateSettings,
    pub state: MigrateState,
    pub step: MigrateStep,
    /// Failed attempts at the current step.
    pub attempts: u32,
    /// What runs now, in words, for `Watch`.
    pub phase: String,
    pub error: String,
    /// Source PostgreSQL database to its replication slot (Prepare).
    #[serde(default)]
    pub slots: BTreeMap<String, String>,
    /// The epoch of the change journal started on the source before the
    /// copy (Prepare): the first catch-up pass names it.
    #[serde(default)]
    pub journal_epoch: u64,
    /// The platform DNS's records of the account as first read, and their
    /// lowered TTLs (`None` without `[dns]`, or before the first read): a
    /// retry keeps the old TTLs to restore.
    #[serde(default)]
    pub dns: Option<DnsPlan>,
    /// Where the copy read each database ("mariadb:blog" to a GTID).
    #[serde(default)]
    pub snapshot_positions: BTreeMap<String, String>,
    #[serde(default)]
    pub progress: Option<CopyProgress>,
    #[serde(default)]
    pub backlog: Option<Backlog>,
    /// Freezes begun, the current one included.
    #[serde(default)]
    pub freeze_tries: u32,
    /// The freeze under way (between the freeze and the switch), then
    /// the one that switched, complete.
    #[serde(default)]
    pub freeze: Option<FreezeWindow>,
    #[serde(default)]
    pub missed_freezes: Vec<FreezeWindow>,
    /// Rolling back because of a cancel (not a failure).
    #[serde(default)]
    pub cancelled: bool,
    /// When the old copy is retired (set at the switch).
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub retire_at: Option<DateTime<Utc>>,
    /// When the old host stops forwarding (set at the finish, from the
    /// DNS switch's time and the records' TTL).
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub forward_until: Option<DateTime<Utc>>,
    /// When the old copy was retired.
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub retired_at: Option<DateTime<Utc>>,
    /// When the old host's forward ended.
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub unforwarded_at: Option<DateTime<Utc>>,
    /// What the retirement removed from the old host.
    #[serde(default)]
    pub removed: Vec<String>,
    #[serde(with = "crate::model::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::model::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl MigrationRun {
    /// Where `database`'s rows verification stands (nothing read yet
    /// before the first round).
    /// Where the MariaDB rows verification of `databases` on
    /// `source_server` stands: the last round's mark, or before the first
    /// the copy's snapshot position (a server's databases are read in one
    /// snapshot).
    pub fn mariadb_rows_mark(&self, source_server: &str, databases: &[String]) -> MariadbRowsMark {
        self.backlog
            .as_ref()
            .and_then(|backlog| backlog.mariadb_rows.get(source_server))
            .cloned()
            .unwrap_or_else(|| MariadbRowsMark {
                through_gtid: databases
                    .iter()
                    .find_map(|d| self.snapshot_positions.get(&format!("mariadb:{d}")))
                    .cloned()
                    .unwrap_or_default(),
                pending: Vec::new(),
            })
    }

    pub fn rows_mark(&self, database: &str) -> RowsMark {
        self.backlog
            .as_ref()
            .and_then(|backlog| backlog.rows.get(database))
            .cloned()
            .unwrap_or_default()
    }

    /// The transfer id of the durable copy.
    pub fn copy_transfer_id(&self) -> String {
        format!("{}-copy", self.id)
    }

    /// The transfer id of the files catch-up pass of freeze `try_number`.
    pub fn catch_up_transfer_id(&self, try_number: u32) -> String {
        format!("{}-files{try_number}", self.id)
    }

    /// Whether the point of no return is behind.
    pub fn switched(&self) -> bool {
        matches!(self.state, MigrateState::Switched | MigrateState::Completed)
    }
}

/// What a step came to. Times come with the outcome: the transition reads
/// no clock.
// One value per step run, moved once: its size is of no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MigrateOutcome {
    /// The source is ready: each PostgreSQL database's slot, the change
    /// journal's epoch, the DNS records read and their TTL lowered.
    Prepared {
        slots: BTreeMap<String, String>,
        journal_epoch: u64,
        dns: Option<DnsPlan>,
    },
    /// The durable copy is complete: where each database was read.
    Copied {
        positions: BTreeMap<String, String>,
        progress: CopyProgress,
    },
    /// The copy failed for good.
    CopyFailed(String),
    /// Replication runs to the copy.
    Replicating,
    /// The backlog now.
    Measured(Backlog),
    /// The account is frozen, fenced and drained, its sequences and files
    /// carried: the switch may run. The window so far.
    Frozen(FreezeWindow),
    /// The freeze missed its deadline, or a part of it failed: the source
    /// is thawed again.
    FreezeMissed(FreezeWindow),
    /// The verification inside the freeze found the copy differs from the
    /// source (`missed_because` names what): the freeze is undone and the
    /// migration rolls back, as another try would find the same.
    VerifyMismatch(FreezeWindow),
    /// The target serves the account since `accepted_at`; the parts of the
    /// switch.
    Switched {
        parts: Vec<FreezePart>,
        #[serde(with = "crate::model::rfc3339")]
        accepted_at: DateTime<Utc>,
    },
    /// Replication torn down and the old host's sessions ended; the DNS
    /// records switched at `at` (or, without `[dns]`, the finish's time).
    Finished {
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
    },
    /// The old copy is retired, at `at`: what went.
    Retired {
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
        removed: Vec<String>,
    },
    /// The old host no longer forwards, since `at`.
    Unforwarded {
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
    },
    /// Everything before the switch is undone.
    RolledBack,
    /// A host could not be reached: try again.
    Unreachable(String),
    /// An agent refused for good.
    Refused(String),
    /// The step stopped early because a cancel waits in the inbox.
    Stopped,
}
