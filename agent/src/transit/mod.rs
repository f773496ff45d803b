//! What a transit host does for the transit pool (R9), beyond holding
//! copies like any target: [`wipe`], the removal of what Navette put on
//! the host for one allocation once it is released.
//!
//! Must not: touch an account that lives on the host, or a copy not named
//! after the allocation.

pub mod wipe;
