//! Materialization planning (DESIGN.md §4): a feature set version's timeline of data
//! intervals, and how a backfill window becomes partition tasks. Pure code: no IO, so the rules
//! are tested exhaustively; the engine and the offline store carry the plans out.

mod timeline;

pub use timeline::{BackfillPlan, DataStatus, Interval, Timeline, plan_backfill};
