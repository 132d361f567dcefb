//! `/healthz` (the process is up), `/readyz` (it can take jobs: registry readable, cluster
//! endpoint serving) and Prometheus `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use almanac_jobs::manager::DURATION_BUCKETS;
use almanac_jobs::registry::Registry;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::error::{Result, SchedulerError};
use crate::service::ServiceState;

/// States every job and task can be in; each is reported, zero or not.
const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

pub async fn serve(
    state: Arc<ServiceState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| SchedulerError::Serve {
            what: "HTTP",
            message: e.to_string(),
        })
}

async fn ready(State(state): State<Arc<ServiceState>>) -> (StatusCode, String) {
    match Registry::open(state.manager.home()) {
        Ok(_) => {
            let executors = state
                .cluster
                .executors()
                .await
                .into_iter()
                .filter(|e| e.status == "active")
                .count();
            (
                StatusCode::OK,
                format!("ready; {executors} active executor(s)\n"),
            )
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(state): State<Arc<ServiceState>>) -> (StatusCode, String) {
    match render(&state).await {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the registry: {e}\n"),
        ),
    }
}

async fn render(state: &ServiceState) -> Result<String> {
    let (jobs, tasks) = Registry::open(state.manager.home())?.state_counts()?;
    let mut out = String::new();
    let mut by_state = |name: &str, help: &str, counts: &[(String, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in STATES {
            let n = counts
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "{name}{{state=\"{s}\"}} {n}");
        }
    };
    by_state("almanac_jobs", "Jobs in the registry by state.", &jobs);
    by_state(
        "almanac_tasks",
        "Job tasks in the registry by state.",
        &tasks,
    );

    let m = &state.manager.metrics;
    let _ = writeln!(
        out,
        "# HELP almanac_tasks_finished_total Task runs this process finished, by result.\n\
         # TYPE almanac_tasks_finished_total counter\n\
         almanac_tasks_finished_total{{result=\"succeeded\"}} {}\n\
         almanac_tasks_finished_total{{result=\"failed\"}} {}",
        m.succeeded.load(Ordering::Relaxed),
        m.failed.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP almanac_rows_written_total Rows written by tasks this process ran.\n\
         # TYPE almanac_rows_written_total counter\n\
         almanac_rows_written_total {}",
        m.rows_written.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP almanac_task_duration_seconds Task durations, all attempts included.\n\
         # TYPE almanac_task_duration_seconds histogram"
    );
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "almanac_task_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            m.duration_buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = m.duration_buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "almanac_task_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
         almanac_task_duration_seconds_sum {}\n\
         almanac_task_duration_seconds_count {count}",
        m.duration_millis_sum.load(Ordering::Relaxed) as f64 / 1000.0
    );

    render_schedules(state, &mut out)?;

    let executors = state.cluster.executors().await;
    let _ = writeln!(
        out,
        "# HELP almanac_executors Executors known to the cluster, by status.\n\
         # TYPE almanac_executors gauge"
    );
    for s in ["active", "terminating", "dead", "unknown"] {
        let n = executors.iter().filter(|e| e.status == s).count();
        let _ = writeln!(out, "almanac_executors{{status=\"{s}\"}} {n}");
    }
    let slots: u32 = executors
        .iter()
        .filter(|e| e.status == "active")
        .map(|e| e.slots)
        .sum();
    let _ = writeln!(
        out,
        "# HELP almanac_executor_slots Task slots of active executors.\n\
         # TYPE almanac_executor_slots gauge\n\
         almanac_executor_slots {slots}\n\
         # HELP almanac_running_jobs Jobs this process is running now.\n\
         # TYPE almanac_running_jobs gauge\n\
         almanac_running_jobs {}\n\
         # HELP almanac_build_info The Almanac version serving.\n\
         # TYPE almanac_build_info gauge\n\
         almanac_build_info{{version=\"{}\"}} 1",
        state.manager.running_jobs(),
        state.version
    );
    Ok(out)
}

/// Schedules: triggers handled by this process, and per feature set version the runs that
/// failed in a row (alert on it above zero) and the next trigger time.
fn render_schedules(state: &ServiceState, out: &mut String) -> Result<()> {
    let t = &state.triggers.metrics;
    let _ = writeln!(
        out,
        "# HELP almanac_schedule_triggers_total Schedule triggers this process handled, by outcome.\n\
         # TYPE almanac_schedule_triggers_total counter\n\
         almanac_schedule_triggers_total{{outcome=\"submitted\"}} {}\n\
         almanac_schedule_triggers_total{{outcome=\"skipped\"}} {}\n\
         almanac_schedule_triggers_total{{outcome=\"waited\"}} {}",
        t.submitted.load(Ordering::Relaxed),
        t.skipped.load(Ordering::Relaxed),
        t.waited.load(Ordering::Relaxed)
    );
    let schedules = Registry::open(state.manager.home())?.schedule_overview()?;
    let now = state
        .triggers
        .now()
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_micros());
    let _ = writeln!(
        out,
        "# HELP almanac_schedule_consecutive_failures Scheduled runs of a feature set version that failed since its last success.\n\
         # TYPE almanac_schedule_consecutive_failures gauge"
    );
    for s in &schedules {
        let _ = writeln!(
            out,
            "almanac_schedule_consecutive_failures{{feature_set=\"{}\"}} {}",
            s.feature_set,
            s.consecutive_failures()
        );
    }
    let _ = writeln!(
        out,
        "# HELP almanac_schedule_next_trigger_seconds When a feature set version's schedule next triggers (Unix time).\n\
         # TYPE almanac_schedule_next_trigger_seconds gauge"
    );
    for s in &schedules {
        if let Some(next) = s.next_trigger(now) {
            let _ = writeln!(
                out,
                "almanac_schedule_next_trigger_seconds{{feature_set=\"{}\"}} {}",
                s.feature_set,
                next as f64 / 1e6
            );
        }
    }
    Ok(())
}
