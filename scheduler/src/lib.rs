//! `almanac-scheduler`: the long-running service that owns Almanac's jobs.
//!
//! One process serves three things:
//! - the job API ([`almanac_proto`]) for the `almanac` CLI and pipelines ([`service`]);
//! - Ballista's scheduler, embedded, to which `almanac-executor`s connect ([`cluster`]);
//! - `/healthz`, `/readyz` and Prometheus `/metrics` over HTTP ([`http`]);
//! - the schedules' trigger loop ([`TriggerLoop`]), which submits scheduled materializations.
//!
//! Jobs live in the store's registry database, so a restart loses nothing: the
//! [`JobManager`](almanac_jobs::manager::JobManager) resumes what was queued or running, and a
//! backfill task that had committed commits nothing the second time.

pub mod cluster;
pub mod error;
pub mod http;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use almanac_jobs::engine::{Engine, EngineConfig};
use almanac_jobs::manager::{JobManager, ManagerConfig, RetryPolicy, RunOptions};
use almanac_jobs::registry::Registry;
use almanac_jobs::trigger::{TriggerConfig, TriggerLoop, clock};
use clap::{Parser, ValueEnum};

pub use error::{Result, SchedulerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `almanac-scheduler`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "almanac-scheduler",
    version,
    about = "Almanac's scheduler service"
)]
pub struct SchedulerArgs {
    /// A YAML file of flag values (keys are the flag names). Flags and environment variables
    /// win over it.
    #[arg(long, env = "ALMANAC_SCHEDULER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the configuration and print the settings it adds up to (as a config file would
    /// hold them), then exit: 0 when the service would start with them, 2 otherwise.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// The feature store: registry database, jobs and (by default) the offline store.
    #[arg(long, env = "ALMANAC_HOME", default_value = ".almanac")]
    pub home: PathBuf,
    /// Where the job API listens (the `almanac --scheduler` address).
    #[arg(
        long,
        default_value = "127.0.0.1:50061",
        env = "ALMANAC_SCHEDULER_BIND"
    )]
    pub bind: SocketAddr,
    /// Where executors connect (Ballista's scheduler protocol).
    #[arg(
        long,
        default_value = "0.0.0.0:50050",
        env = "ALMANAC_SCHEDULER_EXECUTOR_BIND"
    )]
    pub executor_bind: SocketAddr,
    /// The host executors and this process use to reach the executor port.
    #[arg(
        long,
        default_value = "127.0.0.1",
        env = "ALMANAC_SCHEDULER_ADVERTISE_HOST"
    )]
    pub advertise_host: String,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "ALMANAC_SCHEDULER_HTTP_BIND"
    )]
    pub http_bind: SocketAddr,
    /// Jobs running at once; more wait, queued, in submission order.
    #[arg(long, default_value_t = 4, env = "ALMANAC_SCHEDULER_MAX_RUNNING_JOBS")]
    pub max_running_jobs: usize,
    /// Tasks of one job running at once.
    #[arg(long, default_value_t = 2, env = "ALMANAC_SCHEDULER_PARALLEL_TASKS")]
    pub parallel_tasks: usize,
    /// Attempts per task before it fails for good.
    #[arg(long, default_value_t = 3, env = "ALMANAC_SCHEDULER_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Wait before a task's second attempt, in milliseconds; doubled for each later one.
    #[arg(
        long,
        default_value_t = 1000,
        env = "ALMANAC_SCHEDULER_RETRY_BACKOFF_MS"
    )]
    pub retry_backoff_ms: u64,
    /// Seconds without a heartbeat after which an executor is lost and its work rerun.
    #[arg(
        long,
        default_value_t = 30,
        env = "ALMANAC_SCHEDULER_EXECUTOR_TIMEOUT_SECS"
    )]
    pub executor_timeout_secs: u64,
    /// Partitions a query is split into.
    #[arg(long, default_value_t = 4, env = "ALMANAC_SCHEDULER_TARGET_PARTITIONS")]
    pub target_partitions: usize,
    #[arg(long, value_enum, default_value = "text", env = "ALMANAC_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Missed schedule triggers run after downtime, counted back from now; older ones are
    /// skipped (and listed in the log, and in `featureset show`).
    #[arg(long, default_value_t = 10, env = "ALMANAC_SCHEDULER_CATCH_UP_LIMIT")]
    pub catch_up_limit: usize,
    /// Trigger no schedule: run submitted jobs only (maintenance, or a second scheduler).
    #[arg(long, env = "ALMANAC_SCHEDULER_NO_SCHEDULES")]
    pub no_schedules: bool,
    /// Read the schedules' clock from this file (an RFC 3339 time, re-read every tick)
    /// instead of the system clock: for tests and drills.
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_file: Option<PathBuf>,
    /// Seconds between looks at the schedules.
    #[arg(long, default_value_t = 1.0, hide = true)]
    #[serde(skip)]
    pub schedule_tick_secs: f64,
    /// Report this Almanac version instead of the built one (tests of version checks).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretend_version: Option<String>,
}

/// Runs the binary: parses flags, sets up logging, serves until SIGTERM or Ctrl-C.
pub fn main() -> ExitCode {
    let args = almanac_jobs::config::parse::<SchedulerArgs>("ALMANAC_SCHEDULER_CONFIG")
        .unwrap_or_else(|e| e.exit());
    if args.check_config {
        print!("{}", almanac_jobs::config::settings_yaml(&args));
        return ExitCode::SUCCESS;
    }
    almanac_jobs::logging::init(
        args.log_format == LogFormat::Json,
        almanac_jobs::logging::DEFAULT_FILTER,
    );
    almanac_jobs::logging::run_main(Some("scheduler"), serve(args, shutdown_signal()))
}

pub use almanac_jobs::logging::shutdown_signal;

/// Serves until `shutdown` resolves. Running jobs are then left as they are in the registry,
/// and resumed by the next start.
pub async fn serve(
    args: SchedulerArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // Opening the registry first migrates it and fails early on a bad home.
    let home = std::path::absolute(&args.home).map_err(|e| SchedulerError::Io {
        action: "cannot resolve the store folder",
        path: args.home.clone(),
        source: e,
    })?;
    Registry::open(&home)?;
    let version = args
        .pretend_version
        .clone()
        .unwrap_or_else(|| almanac_proto::ALMANAC_VERSION.to_string());
    let engine_config = EngineConfig {
        target_partitions: args.target_partitions.max(1),
        ..EngineConfig::default()
    };
    let ballista = cluster::start(&args, &engine_config, &version).await?;
    let engine = Engine::remote(engine_config, &ballista.client_address)
        .await?
        .with_fence(Arc::new(ballista.fence()));
    let manager = Arc::new(JobManager::new(
        engine,
        home.clone(),
        ManagerConfig {
            max_running_jobs: args.max_running_jobs.max(1),
            run: RunOptions {
                parallel_tasks: args.parallel_tasks.max(1),
                retry: RetryPolicy {
                    max_attempts: args.max_attempts.max(1),
                    backoff: Duration::from_millis(args.retry_backoff_ms),
                },
            },
            poll: Duration::from_millis(500),
            only_kind: None,
        },
        Some(Arc::new(ballista.canceller())),
    ));
    let triggers = Arc::new(TriggerLoop::new(
        &home,
        clock(args.clock_file.as_deref()),
        TriggerConfig {
            catch_up_limit: args.catch_up_limit.max(1),
            tick: Duration::from_secs_f64(args.schedule_tick_secs.clamp(0.05, 60.0)),
        },
    ));
    let state = Arc::new(service::ServiceState {
        manager: Arc::clone(&manager),
        triggers: Arc::clone(&triggers),
        cluster: ballista.clone(),
        version,
    });

    let api_listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| SchedulerError::Bind {
            what: "job API",
            address: args.bind,
            source: e,
        })?;
    let http_listener = tokio::net::TcpListener::bind(args.http_bind)
        .await
        .map_err(|e| SchedulerError::Bind {
            what: "HTTP (health and metrics)",
            address: args.http_bind,
            source: e,
        })?;
    tracing::info!(
        api = %args.bind,
        executors = %ballista.executor_address,
        http = %args.http_bind,
        home = %home.display(),
        max_running_jobs = args.max_running_jobs,
        "almanac scheduler serving"
    );

    // Whichever part stops first (a signal, or a server failing) stops the others.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stop = &stop_tx;
    let api = async {
        let r = service::serve(Arc::clone(&state), api_listener, stopped(stop_rx.clone())).await;
        stop.send_replace(true);
        r
    };
    let http = async {
        let r = http::serve(Arc::clone(&state), http_listener, stopped(stop_rx.clone())).await;
        stop.send_replace(true);
        r
    };
    let jobs = async {
        let r = Arc::clone(&manager).run(stopped(stop_rx.clone())).await;
        stop.send_replace(true);
        r
    };
    let schedules = async {
        if args.no_schedules {
            tracing::info!("--no-schedules: no schedule is triggered by this scheduler");
            return;
        }
        triggers
            .run(stopped(stop_rx.clone()), &|_| manager.wake())
            .await;
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down: running jobs resume at the next start"),
            _ = stopped(stop_rx.clone()) => {}
        }
        stop.send_replace(true);
    };
    let (api, http, jobs, (), ()) = tokio::join!(api, http, jobs, schedules, signal);
    ballista.stop().await;
    api?;
    http?;
    jobs?;
    Ok(())
}
