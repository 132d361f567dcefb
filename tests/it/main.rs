//! Almanac's integration tests: one binary, one module per area.

mod asof;
mod backfill;
mod cli;
mod cluster;
mod common;
mod deploy;
mod object_stores;
mod offline;
mod registry;
mod retrieve;
mod schedules;
mod sources;
mod specs;
mod windows;
