//! The embedded Ballista scheduler that `almanac-executor`s connect to.
//!
//! It plans with Almanac's session state (functions, object stores, the as-of join and the
//! offline-store writer, through Almanac's codecs), schedules pull-based (executors ask for
//! work, so an executor started mid-job gets tasks at its first poll), and refuses executors
//! built from another Almanac version at registration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use almanac_jobs::engine::{EngineConfig, almanac_session_state};
use almanac_jobs::engine::{ExecutorLossFence, FenceMark};
use almanac_jobs::manager::QueryCanceller;
use almanac_proto::EXECUTOR_AGENT_PREFIX;
use almanac_proto::v1::executor_service_server::{ExecutorService, ExecutorServiceServer};
use almanac_proto::v1::{RegisterExecutorRequest, RegisterExecutorResponse};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::cluster::ClusterStateEvent;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::metrics::default_metrics_collector;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinHandle;
use tonic::{Request, Status};

use crate::SchedulerArgs;
use crate::error::{Result, SchedulerError};

type Ballista = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// An executor as the cluster sees it.
#[derive(Debug, Clone)]
pub struct ExecutorView {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub slots: u32,
    /// Seconds since its last heartbeat.
    pub last_seen_secs: u64,
    /// active, terminating, dead or unknown.
    pub status: String,
}

/// The executor endpoint's server task and its stop signal.
type Serving = (JoinHandle<()>, tokio::sync::oneshot::Sender<()>);

/// A running embedded Ballista scheduler.
#[derive(Clone)]
pub struct Cluster {
    server: Ballista,
    /// Where executors connect.
    pub executor_address: SocketAddr,
    /// Where this process's own Ballista client connects (`host:port`).
    pub client_address: String,
    executor_timeout: Duration,
    serving: Arc<tokio::sync::Mutex<Option<Serving>>>,
    removals: Arc<AtomicU64>,
    watcher: Arc<JoinHandle<()>>,
}

/// Starts Ballista's scheduler on `args.executor_bind`.
pub async fn start(args: &SchedulerArgs, engine: &EngineConfig, version: &str) -> Result<Cluster> {
    let state = almanac_session_state(engine)?;
    let session_config = state.config().clone();
    let logical = session_config.ballista_logical_extension_codec();
    let physical = session_config.ballista_physical_extension_codec();
    let session_state = state.clone();
    let session_builder = Arc::new(move |_: SessionConfig| Ok(session_state.clone()));
    let config_producer = {
        let config = session_config.clone();
        Arc::new(move || config.clone())
    };
    let listener = tokio::net::TcpListener::bind(args.executor_bind)
        .await
        .map_err(|e| SchedulerError::Bind {
            what: "executor (Ballista)",
            address: args.executor_bind,
            source: e,
        })?;
    let bound = listener.local_addr().map_err(|e| SchedulerError::Bind {
        what: "executor (Ballista)",
        address: args.executor_bind,
        source: e,
    })?;
    let endpoint = format!("{}:{}", args.advertise_host, bound.port());
    let timeout = args.executor_timeout_secs.max(2);
    let mut config = SchedulerConfig::default()
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
        .with_hostname(args.advertise_host.clone())
        .with_port(bound.port())
        // A lost executor's running tasks are rerun once this long has passed without a
        // heartbeat; Almanac retries whatever Ballista gives up on.
        // An executor that announces it is stopping keeps its place this long, so the tasks
        // it drains can finish before its work is considered lost.
        .with_remove_executor_wait_secs(timeout)
        .with_no_executors_grace_period_seconds(timeout);
    config.executor_timeout_seconds = timeout;
    config.expire_dead_executor_interval_seconds = (timeout / 3).max(1);
    config.override_logical_codec = Some(logical.clone());
    config.override_physical_codec = Some(physical.clone());
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_memory(endpoint.clone(), session_builder, config_producer);
    let metrics = default_metrics_collector()
        .map_err(|e| SchedulerError::Ballista(format!("cannot set up its metrics: {e}")))?;
    let mut server: Ballista = SchedulerServer::new(
        endpoint,
        cluster,
        BallistaCodec::new(logical, physical),
        config,
        metrics,
    );
    server
        .init()
        .await
        .map_err(|e| SchedulerError::Ballista(format!("cannot start: {e}")))?;

    let max_message = session_config.ballista_grpc_client_max_message_size();
    let grpc = SchedulerGrpcServer::new(server.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let expected = version.to_string();
    let checked =
        tonic::service::interceptor::InterceptedService::new(grpc, move |request: Request<()>| {
            check_executor_version(request, &expected)
        });
    let registration = ExecutorServiceServer::new(Registration {
        version: version.to_string(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let handle = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(checked)
            .add_service(registration)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the executor endpoint stopped");
        }
    });
    // Counts executors leaving the cluster, for the loss fence.
    let removals = Arc::new(AtomicU64::new(0));
    let mut events = server.cluster_state_events().await.map_err(|e| {
        SchedulerError::Ballista(format!("cannot follow the cluster's events: {e}"))
    })?;
    let counter = Arc::clone(&removals);
    let watcher = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let ClusterStateEvent::RemovedExecutor { executor_id } = event {
                counter.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(executor = %executor_id, "executor left the cluster");
            }
        }
    });
    let client_host = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    };
    Ok(Cluster {
        server,
        executor_address: bound,
        client_address: format!("{client_host}:{}", bound.port()),
        executor_timeout: Duration::from_secs(timeout),
        serving: Arc::new(tokio::sync::Mutex::new(Some((handle, stop_tx)))),
        removals,
        watcher: Arc::new(watcher),
    })
}

/// Almanac's executor handshake: an executor of another version is told so and exits.
struct Registration {
    version: String,
}

#[tonic::async_trait]
impl ExecutorService for Registration {
    async fn register(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<tonic::Response<RegisterExecutorResponse>, Status> {
        let r = request.into_inner();
        if r.version != self.version {
            tracing::warn!(
                executor = %r.executor_id,
                executor_version = %r.version,
                version = %self.version,
                "refused an executor of another version"
            );
            return Err(version_mismatch(&self.version, &r.version));
        }
        tracing::info!(executor = %r.executor_id, "executor registered");
        Ok(tonic::Response::new(RegisterExecutorResponse {
            scheduler_version: self.version.clone(),
        }))
    }
}

fn version_mismatch(ours: &str, theirs: &str) -> Status {
    Status::failed_precondition(format!(
        "this scheduler runs Almanac {ours}, the executor Almanac {theirs}: run executors of \
         the scheduler's version"
    ))
}

/// Refuses calls from an Almanac executor of another version. Calls without Almanac's user
/// agent (this process's own Ballista client) pass.
#[allow(clippy::result_large_err)]
fn check_executor_version(request: Request<()>, expected: &str) -> Result<Request<()>, Status> {
    let agent = request
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(rest) = agent.strip_prefix(EXECUTOR_AGENT_PREFIX) {
        let theirs = rest.split_whitespace().next().unwrap_or_default();
        if theirs != expected {
            return Err(version_mismatch(expected, theirs));
        }
    }
    Ok(request)
}

impl Cluster {
    /// Executors registered with the cluster.
    pub async fn executors(&self) -> Vec<ExecutorView> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let manager = &self.server.state.executor_manager;
        let Ok(executors) = manager.get_executors_state().await else {
            return Vec::new();
        };
        executors
            .into_iter()
            .map(|(meta, seen, _)| {
                let last_seen_secs = seen
                    .map(|d| now.saturating_sub(d.as_secs()))
                    .unwrap_or(u64::MAX);
                let status = match manager
                    .get_executor_hearbeat(&meta.id)
                    .and_then(|h| h.status)
                    .and_then(|s| s.status)
                {
                    _ if last_seen_secs > self.executor_timeout.as_secs() => "dead".to_string(),
                    Some(ballista_core::serde::protobuf::executor_status::Status::Active(_)) => {
                        "active".to_string()
                    }
                    Some(ballista_core::serde::protobuf::executor_status::Status::Terminating(
                        _,
                    )) => "terminating".to_string(),
                    Some(ballista_core::serde::protobuf::executor_status::Status::Dead(_)) => {
                        "dead".to_string()
                    }
                    // Pull-based executors report no status while they poll for work.
                    None => "active".to_string(),
                    _ => "unknown".to_string(),
                };
                ExecutorView {
                    id: meta.id,
                    host: meta.host,
                    port: meta.port,
                    slots: meta.specification.vcores,
                    last_seen_secs,
                    status,
                }
            })
            .collect()
    }

    /// Ballista queries running or waiting.
    pub fn running_queries(&self) -> usize {
        self.server.running_job_number() + self.server.pending_job_number()
    }

    pub fn canceller(&self) -> BallistaCanceller {
        BallistaCanceller {
            server: self.server.clone(),
        }
    }

    pub fn fence(&self) -> LossFence {
        LossFence {
            cluster: self.clone(),
        }
    }

    async fn executor_ids(&self) -> Vec<String> {
        match self
            .server
            .state
            .executor_manager
            .get_executors_state()
            .await
        {
            Ok(executors) => executors.into_iter().map(|(m, _, _)| m.id).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Stops serving executors.
    pub async fn stop(&self) {
        self.watcher.abort();
        if let Some((handle, stop)) = self.serving.lock().await.take() {
            let _ = stop.send(());
            let _ = handle.await;
        }
    }
}

/// Cancels Ballista queries by name (Almanac names them `almanac/<job>/<task>/<attempt>`).
pub struct BallistaCanceller {
    server: Ballista,
}

#[async_trait::async_trait]
impl QueryCanceller for BallistaCanceller {
    async fn cancel_queries(&self, prefix: &str) {
        let jobs = match self.server.state.task_manager.get_running_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the cluster's queries to cancel them");
                return;
            }
        };
        for job in jobs.into_iter().filter(|j| j.job_name.starts_with(prefix)) {
            tracing::info!(query = %job.job_id, name = %job.job_name, "cancelling query");
            if let Err(e) = self.server.cancel_job(job.job_id.clone()).await {
                tracing::warn!(query = %job.job_id, error = %e, "cannot cancel query");
            }
        }
    }
}

/// Refuses results of queries that ran while an executor left (see [`ExecutorLossFence`]):
/// by the executors registered at the start that are gone, and by the removals counted from
/// the cluster's events (an executor that joined and left during the query).
pub struct LossFence {
    cluster: Cluster,
}

#[async_trait::async_trait]
impl ExecutorLossFence for LossFence {
    async fn mark(&self) -> FenceMark {
        FenceMark {
            removals: self.cluster.removals.load(Ordering::SeqCst),
            executors: self.cluster.executor_ids().await,
        }
    }

    async fn lost_since(&self, mark: &FenceMark) -> Option<String> {
        let now = self.cluster.executor_ids().await;
        let gone: Vec<&str> = mark
            .executors
            .iter()
            .filter(|e| !now.contains(e))
            .map(String::as_str)
            .collect();
        let removals = self
            .cluster
            .removals
            .load(Ordering::SeqCst)
            .saturating_sub(mark.removals);
        if !gone.is_empty() {
            Some(format!("executor {} left the cluster", gone.join(", ")))
        } else if removals > 0 {
            Some(format!("{removals} executor(s) left the cluster"))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(agent: Option<&str>) -> Result<Request<()>, Status> {
        let mut request = Request::new(());
        if let Some(agent) = agent {
            request
                .metadata_mut()
                .insert("user-agent", agent.parse().unwrap());
        }
        check_executor_version(request, "1.2.3")
    }

    #[test]
    fn executors_of_another_version_are_refused_and_clients_pass() {
        assert!(call(Some("almanac-executor/1.2.3 tonic/0.14.9")).is_ok());
        let refused = call(Some("almanac-executor/1.2.4 tonic/0.14.9")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused
                .message()
                .contains("runs Almanac 1.2.3, the executor Almanac 1.2.4"),
            "{}",
            refused.message()
        );
        // This process's own Ballista client.
        assert!(call(Some("tonic/0.14.9")).is_ok());
        assert!(call(None).is_ok());
    }
}
