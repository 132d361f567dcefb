//! `almanac-jobs`: Almanac's domain library.
//!
//! Everything the services and the CLI do lives here: reading and validating the files users
//! write ([`spec`]), reading sources ([`source`]), computing features ([`transform`],
//! [`compute`]) on the Ballista engine ([`engine`]), and generating tutorial-shaped sample data
//! ([`sample_data`]).

pub mod asof_join;
pub mod backfill;
pub mod bench;
pub mod codec;
pub mod compute;
pub mod config;
mod delta;
pub mod engine;
pub mod error;
pub mod init;
pub mod logging;
pub mod manager;
pub mod materialize;
pub mod offline;
pub mod ordered_table;
pub mod part_writer;
pub mod planner;
pub mod registry;
pub mod retrieve;
pub mod sample_data;
pub mod schedule;
pub mod source;
pub mod spec;
pub mod storage;
pub mod time;
pub mod timestamp;
pub mod transform;
pub mod trigger;
pub mod window_agg;

pub use error::{JobsError, Result};
