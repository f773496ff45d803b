//! Durable workflows of the kinds Navette runs on the engine
//! ([`crate::engine`]): tests today, migrations and server plans next.
//!
//! - [`test_flow`]: the test's pure transition function (commands, the
//!   timer and step outcomes in, what to record out), unit-tested edge by
//!   edge;
//! - [`test_kind`]: the test as an engine kind: [`test_flow`] driven by the
//!   engine's events and step outcomes, and the steps (grant, copy,
//!   remove) performed through `agents` in domain types;
//! - [`migrate_run`]: what a migration remembers (its state, steps,
//!   backlog, freeze windows), plain data;
//! - [`migrate_kind`]: *Migrate* as an engine kind: its pure transition,
//!   edge by edge, and the point of no return (the switch);
//! - [`migrate_steps`]: the migration's steps against the agents (copy,
//!   replication, freeze, switch, retire, unforward, rollback), the
//!   cutover's actions through
//!   `agents::cutover`;
//! - [`test_events`]: the panel's commands (create, refresh, delete) as
//!   events of the test's workflow, their effect shown at once.
//!
//! Grants end with their copy: when a copy ends (done or failed), and again
//! when a copy is removed, the source agent is asked to revoke the grants
//! of the test's transfers (best effort: a grant also expires by itself).

pub mod migrate_dns;
pub mod migrate_kind;
pub mod migrate_run;
pub mod migrate_steps;
pub mod migrate_verify;
pub mod test_events;
pub mod test_flow;
pub mod test_kind;
