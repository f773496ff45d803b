//! The transit pool (R9): which transit host serves which dedicated server
//! or VPS, the queue of those waiting, the release (with the transit
//! host's wipe) and what it costs.
//!
//! - [`billing`]: the charge of an allocation, pure integer arithmetic;
//! - [`pool`]: the pure rules: who may ask, what a release is refused for,
//!   which addresses an allocation holds;
//! - [`allocate`]: requesting, releasing and serving the queue, through
//!   `store::transit` (the SQL, under a per-class advisory lock) and the
//!   transit host's agent (`agents::transit`).
//!
//! Owns: the `transit_allocations` table and `hosts.configuration_class`.
//! Must not: know protobuf (that is `api::transit`), or touch a host other
//! than through its agent.
//!
//! Invariants: a transit host is held by at most one allocation (active or
//! wiping), enforced by a unique index and decided under the class's
//! advisory lock, so several controllers agree; a request is served in the
//! order requests of its class arrived; billing counts from the hand-over
//! to the release only.

pub mod allocate;
pub mod billing;
pub mod pool;

use crate::model::Time;
pub use billing::{Price, PricePeriod};

/// Where an allocation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocationState {
    /// In its class's queue.
    Waiting,
    /// The transit host is the server's.
    Active,
    /// Released (billing stopped); the transit host is being wiped.
    Wiping,
    /// Released and wiped.
    Released,
    /// Withdrawn from the queue before it was served.
    Cancelled,
}

impl AllocationState {
    pub const ALL: [AllocationState; 5] = [
        AllocationState::Waiting,
        AllocationState::Active,
        AllocationState::Wiping,
        AllocationState::Released,
        AllocationState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AllocationState::Waiting => "waiting",
            AllocationState::Active => "active",
            AllocationState::Wiping => "wiping",
            AllocationState::Released => "released",
            AllocationState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<AllocationState> {
        AllocationState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A request for transit and, once served, the transit host it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub id: String,
    pub server_host_id: String,
    pub configuration_class: String,
    pub state: AllocationState,
    pub transit_host_id: Option<String>,
    /// While waiting: 1 for the next in line.
    pub queue_position: Option<u32>,
    pub price: Price,
    pub requested_by: String,
    pub requested_at: Time,
    pub started_at: Option<Time>,
    pub ended_at: Option<Time>,
    /// The free period in force when it started.
    pub free_seconds: u64,
    /// The last wipe's failure, while wiping.
    pub wipe_error: String,
}

impl Allocation {
    /// When the free period ends, once started.
    pub fn free_until(&self) -> Option<Time> {
        let free = i64::try_from(self.free_seconds).unwrap_or(i64::MAX);
        self.started_at
            .map(|start| start + chrono::Duration::seconds(free))
    }

    /// Its charge counted to `now` (or to its end): `None` if it never
    /// started.
    pub fn charge(&self, now: Time) -> Option<(Time, billing::Charge)> {
        let start = self.started_at?;
        let end = self.ended_at.unwrap_or(now).max(start);
        let elapsed = u64::try_from((end - start).num_seconds()).unwrap_or(0);
        Some((
            end,
            billing::charge(elapsed, self.free_seconds, &self.price),
        ))
    }
}
