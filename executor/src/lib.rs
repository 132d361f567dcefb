//! `almanac-executor`: a Ballista executor that runs Almanac's tasks.
//!
//! It is Ballista's executor process with Almanac's parts plugged in: the codecs for the as-of
//! join, the offline-store writer and the ordered observation scan; the timestamp functions;
//! the object stores (credentials from the environment); a memory pool that makes operators
//! spill. It asks the scheduler for work (pull-based), so it may join or leave a cluster at
//! any time. On SIGTERM it stops taking tasks, finishes the running ones and exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use almanac_jobs::engine::{EngineConfig, almanac_session_state, runtime_builder};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use clap::{Parser, ValueEnum};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Jobs(#[from] almanac_jobs::JobsError),
    #[error("--scheduler '{0}': expected HOST:PORT of the scheduler's executor endpoint")]
    SchedulerAddress(String),
    #[error("--memory-limit '{0}': expected a size such as 2GiB or 512MiB")]
    MemoryLimit(String),
    #[error("{0}")]
    Ballista(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {address} for health checks (--http-bind): {source}")]
    HttpBind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the health endpoint failed: {0}")]
    Http(String),
    #[error("the scheduler at {address} refused this executor: {message}")]
    Refused { address: String, message: String },
    #[error("cannot reach the scheduler at {address} within {secs}s: {message}")]
    Unreachable {
        address: String,
        secs: u16,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `almanac-executor`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "almanac-executor", version, about = "Almanac's executor")]
pub struct ExecutorArgs {
    /// A YAML file of flag values (keys are the flag names). Flags and environment variables
    /// win over it.
    #[arg(long, env = "ALMANAC_EXECUTOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,
    /// Check the configuration and print the settings it adds up to (as a config file would
    /// hold them), then exit: 0 when the service would start with them, 2 otherwise.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// The scheduler's executor endpoint, HOST:PORT (its --executor-bind).
    #[arg(long, env = "ALMANAC_EXECUTOR_SCHEDULER")]
    pub scheduler: String,
    /// Tasks this executor runs at once (default: the machine's cores).
    #[arg(long, env = "ALMANAC_EXECUTOR_SLOTS")]
    pub slots: Option<usize>,
    /// Folder for shuffle files and spills (default: a temporary folder).
    #[arg(long, env = "ALMANAC_EXECUTOR_WORK_DIR")]
    pub work_dir: Option<String>,
    /// Memory its tasks may use before operators spill, e.g. 2GiB (default: a share of the
    /// machine's or container's memory).
    #[arg(long, env = "ALMANAC_EXECUTOR_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Address to listen on for shuffle reads from other executors.
    #[arg(long, default_value = "0.0.0.0", env = "ALMANAC_EXECUTOR_BIND_HOST")]
    pub bind_host: String,
    /// The host other executors and the scheduler reach this one at.
    #[arg(
        long,
        default_value = "127.0.0.1",
        env = "ALMANAC_EXECUTOR_ADVERTISE_HOST"
    )]
    pub advertise_host: String,
    /// Port of the shuffle (Arrow Flight) service.
    #[arg(long, default_value_t = 50051, env = "ALMANAC_EXECUTOR_PORT")]
    pub port: u16,
    /// Port of its gRPC service.
    #[arg(long, default_value_t = 50052, env = "ALMANAC_EXECUTOR_GRPC_PORT")]
    pub grpc_port: u16,
    /// Where /healthz (the process is up) and /readyz (registered with the scheduler and not
    /// draining) are served.
    #[arg(
        long,
        default_value = "127.0.0.1:9465",
        env = "ALMANAC_EXECUTOR_HTTP_BIND"
    )]
    pub http_bind: std::net::SocketAddr,
    /// Seconds to keep retrying the first connection to the scheduler.
    #[arg(
        long,
        default_value_t = 30,
        env = "ALMANAC_EXECUTOR_CONNECT_TIMEOUT_SECS"
    )]
    pub connect_timeout_secs: u16,
    #[arg(long, value_enum, default_value = "text", env = "ALMANAC_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Report this Almanac version instead of the built one (tests of version checks).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretend_version: Option<String>,
}

pub fn main() -> ExitCode {
    let args = almanac_jobs::config::parse::<ExecutorArgs>("ALMANAC_EXECUTOR_CONFIG")
        .unwrap_or_else(|e| e.exit());
    if args.check_config {
        return match Checked::new(&args) {
            Ok(_) => {
                print!("{}", almanac_jobs::config::settings_yaml(&args));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    almanac_jobs::logging::init(
        args.log_format == LogFormat::Json,
        almanac_jobs::logging::DEFAULT_FILTER,
    );
    almanac_jobs::logging::run_main(Some("executor"), run(args))
}

/// Flag values that need more than clap's parsing, checked before anything starts.
struct Checked {
    scheduler_host: String,
    scheduler_port: u16,
    memory_pool_size: Option<u64>,
}

impl Checked {
    fn new(args: &ExecutorArgs) -> Result<Checked, ExecutorError> {
        let (scheduler_host, scheduler_port) = args
            .scheduler
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| ExecutorError::SchedulerAddress(args.scheduler.clone()))?;
        let memory_pool_size = args.memory_limit.as_deref().map(memory_limit).transpose()?;
        Ok(Checked {
            scheduler_host,
            scheduler_port,
            memory_pool_size,
        })
    }
}

fn memory_limit(text: &str) -> Result<u64, ExecutorError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| ExecutorError::MemoryLimit(text.to_string()))
}

/// Whether this executor can take work, for `/readyz`.
#[derive(Debug, Default)]
struct Readiness {
    registered: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    fn report(&self) -> (StatusCode, &'static str) {
        if self.draining.load(Ordering::Relaxed) {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if self.registered.load(Ordering::Relaxed) {
            (StatusCode::OK, "ready\n")
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not registered with the scheduler yet\n",
            )
        }
    }
}

/// Runs the executor until SIGTERM or Ctrl-C (Ballista's process handles both, draining),
/// with `/healthz` and `/readyz` served beside it for orchestrators.
pub async fn run(args: ExecutorArgs) -> Result<(), ExecutorError> {
    let listener = tokio::net::TcpListener::bind(args.http_bind)
        .await
        .map_err(|source| ExecutorError::HttpBind {
            address: args.http_bind,
            source,
        })?;
    let readiness = Arc::new(Readiness::default());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(r): State<Arc<Readiness>>| async move { r.report() }),
        )
        .with_state(Arc::clone(&readiness));
    // The executor's end stops the health server; a signal marks the executor draining
    // (Ballista's own handler does the draining).
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut watch_stop = stop_rx.clone();
    let http = async {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| ExecutorError::Http(e.to_string()))
    };
    let signal = async {
        tokio::select! {
            _ = almanac_jobs::logging::shutdown_signal() => {
                readiness.draining.store(true, Ordering::Relaxed);
                tracing::info!("draining: finishing running tasks, taking no new ones");
            }
            _ = watch_stop.wait_for(|s| *s) => {}
        }
    };
    let work = async {
        let r = execute(args, &readiness).await;
        stop_tx.send_replace(true);
        r
    };
    let (http, (), work) = tokio::join!(http, signal, work);
    work.and(http)
}

async fn execute(args: ExecutorArgs, readiness: &Readiness) -> Result<(), ExecutorError> {
    let Checked {
        scheduler_host: host,
        scheduler_port: port,
        memory_pool_size,
    } = Checked::new(&args)?;
    if let Some(dir) = &args.work_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            ExecutorError::Setup(format!("cannot create the work folder {dir}: {e}"))
        })?;
    }
    // Ballista logs a failed shuffle-server bind and carries on without it; check first so
    // the executor exits saying why instead of joining a cluster it cannot serve.
    let flight = format!("{}:{}", args.bind_host, args.port);
    drop(std::net::TcpListener::bind(&flight).map_err(|e| {
        ExecutorError::Setup(format!(
            "cannot listen on {flight} for shuffle reads (--bind-host, --port): {e}"
        ))
    })?);
    let version = args
        .pretend_version
        .clone()
        .unwrap_or_else(|| almanac_proto::ALMANAC_VERSION.to_string());

    // The session state gives the executor the same config, codecs and functions as the
    // scheduler that plans the tasks.
    let state = almanac_session_state(&EngineConfig::default())?;
    let session_config = state.config().clone();
    let logical = session_config.ballista_logical_extension_codec();
    let physical = session_config.ballista_physical_extension_codec();
    let functions = Arc::new(BallistaFunctionRegistry::from(&state));
    let spill_dir = args.work_dir.clone();
    let runtime_producer: RuntimeProducer = Arc::new(move |_| {
        let mut runtime = runtime_builder();
        if let Some(dir) = &spill_dir {
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        Ok(Arc::new(runtime.build()?))
    });
    let agent = almanac_proto::executor_user_agent(&version);
    let executor_id = ExecutorProcessConfig::default().executor_id;
    register(
        &args.scheduler,
        &version,
        &executor_id,
        args.connect_timeout_secs,
    )
    .await?;
    readiness.registered.store(true, Ordering::Relaxed);
    let mut config = ExecutorProcessConfig {
        executor_id,
        bind_host: args.bind_host.clone(),
        external_host: Some(args.advertise_host.clone()),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: args.connect_timeout_secs,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: args.work_dir.clone(),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: 5,
        // Shuffle files of finished queries are removed after an hour, checked every minute.
        job_data_ttl_seconds: 3600,
        job_data_clean_up_interval_seconds: 60,
        memory_pool_size,
        override_function_registry: Some(functions),
        override_runtime_producer: Some(runtime_producer),
        override_config_producer: Some(Arc::new(move || session_config.clone())),
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        // The scheduler refuses executors of another Almanac version by this agent.
        override_create_grpc_client_endpoint: Some(Arc::new(move |endpoint| {
            Ok(endpoint.user_agent(agent.clone())?)
        })),
        ..ExecutorProcessConfig::default()
    };
    if let Some(slots) = args.slots {
        config.vcores = slots.max(1);
    }
    tracing::info!(
        id = %config.executor_id,
        scheduler = %args.scheduler,
        slots = config.vcores,
        version = %version,
        "almanac executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ExecutorError::Ballista(format!("{e}")))
}

/// Almanac's handshake before Ballista's: the scheduler refuses another Almanac version, and
/// the executor then exits with its reason rather than polling a scheduler that refuses it.
async fn register(
    address: &str,
    version: &str,
    executor_id: &str,
    timeout_secs: u16,
) -> Result<(), ExecutorError> {
    use almanac_proto::v1::RegisterExecutorRequest;
    use almanac_proto::v1::executor_service_client::ExecutorServiceClient;
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs.max(1) as u64);
    let url = format!("http://{address}");
    loop {
        let attempt = async {
            let mut client = ExecutorServiceClient::connect(url.clone())
                .await
                .map_err(|e| almanac_proto::error_chain(&e))?;
            client
                .register(RegisterExecutorRequest {
                    version: version.to_string(),
                    executor_id: executor_id.to_string(),
                })
                .await
                .map_err(|status| {
                    if status.code() == tonic::Code::FailedPrecondition {
                        format!("refused: {}", status.message())
                    } else {
                        status.to_string()
                    }
                })
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(message) if message.starts_with("refused: ") => {
                return Err(ExecutorError::Refused {
                    address: address.to_string(),
                    message: message.trim_start_matches("refused: ").to_string(),
                });
            }
            Err(message) if std::time::Instant::now() >= deadline => {
                return Err(ExecutorError::Unreachable {
                    address: address.to_string(),
                    secs: timeout_secs,
                    message,
                });
            }
            Err(message) => {
                tracing::warn!(scheduler = address, error = %message, "scheduler not reachable yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}
