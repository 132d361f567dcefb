//! `almanac-proto`: the job API between the `almanac` CLI (or any pipeline) and the scheduler.
//!
//! Generated at build time from `proto/almanac.proto` by protox and tonic-prost-build.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod registry_view;

pub mod v1 {
    tonic::include_proto!("almanac.v1");
}

/// The Almanac version every process reports; a scheduler refuses executors of another one.
pub const ALMANAC_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The user agent an Almanac executor sends to the scheduler: `almanac-executor/<version>`.
pub fn executor_user_agent(version: &str) -> String {
    format!("{EXECUTOR_AGENT_PREFIX}{version}")
}

pub const EXECUTOR_AGENT_PREFIX: &str = "almanac-executor/";

/// An error with its causes on one line: tonic's transport errors ("transport error") say
/// little on their own.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

use almanac_jobs::manager::RetrievalRequest;
use almanac_jobs::registry::{JobInfo, RETRIEVAL};
use almanac_jobs::source::TimeRange;

pub fn window(w: TimeRange) -> v1::Window {
    v1::Window {
        start_us: w.start,
        end_us: w.end,
    }
}

/// A job as the API shows it.
pub fn job_message(j: &JobInfo) -> v1::Job {
    let output = (j.kind == RETRIEVAL)
        .then(|| {
            j.request
                .as_deref()
                .and_then(|r| serde_json::from_str::<RetrievalRequest>(r).ok())
                .map(|r| r.output)
        })
        .flatten();
    v1::Job {
        id: j.id.to_string(),
        kind: j.kind.clone(),
        feature_set: if j.feature_set.name.is_empty() {
            String::new()
        } else {
            j.feature_set.to_string()
        },
        window: Some(window(j.window)),
        state: j.state.name().to_string(),
        created_at: j.created_at.clone(),
        updated_at: j.updated_at.clone(),
        started_at: j.started_at.clone(),
        finished_at: j.finished_at.clone(),
        tasks_total: j.tasks.len() as u32,
        tasks_done: j.tasks_done() as u32,
        tasks_failed: j.tasks_failed() as u32,
        rows: j.rows(),
        error: j.error.clone(),
        tasks: j
            .tasks
            .iter()
            .map(|t| v1::Task {
                index: t.index,
                window: Some(window(t.window)),
                state: t.state.name().to_string(),
                attempts: t.attempts,
                rows: t.rows,
                table_version: t.table_version,
                error: t.error.clone(),
            })
            .collect(),
        output,
    }
}
