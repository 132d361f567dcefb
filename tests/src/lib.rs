//! Test support for Almanac's integration tests: a reference oracle for feature computation,
//! written independently of the engine, and fixture helpers.
//!
//! The oracle is deliberately naive: for every output row it scans every source row of the
//! key. It shares no code with `almanac-jobs`' transformations, so agreeing with it means
//! something.

pub mod fixtures;
pub mod oracle;
pub mod pit_oracle;
