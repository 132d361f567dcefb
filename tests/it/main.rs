//! Almanac's integration tests: one binary, one module per area.

mod cli;
mod common;
mod sources;
mod specs;
mod windows;
