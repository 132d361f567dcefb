//! The job API (`almanac.v1.JobService`) over the job manager and the registry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use almanac_jobs::backfill::{BackfillOptions, DAY_MICROS, create_backfill};
use almanac_jobs::manager::{JobManager, RetrievalRequest, add_model_features, create_retrieval};
use almanac_jobs::materialize::DataStatus;
use almanac_jobs::registry::{FeatureSetRef, JobId, Registry, RunState};
use almanac_jobs::schedule::ScheduleDef;
use almanac_jobs::source::TimeRange;
use almanac_proto::v1::job_service_server::{JobService, JobServiceServer};
use almanac_proto::v1::registry_service_server::{RegistryService, RegistryServiceServer};
use almanac_proto::v1::{self as api};
use almanac_proto::{job_message, registry_view, window};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::error::{Result, SchedulerError, jobs_status};

/// What the API and the HTTP endpoints share.
pub struct ServiceState {
    pub manager: Arc<JobManager>,
    pub triggers: Arc<almanac_jobs::trigger::TriggerLoop>,
    pub cluster: Cluster,
    pub version: String,
}

impl ServiceState {
    /// The schedules' clock: what "next trigger" is counted from.
    fn now(&self) -> i64 {
        self.triggers
            .now()
            .unwrap_or_else(|_| chrono::Utc::now().timestamp_micros())
    }

    fn registry(&self) -> std::result::Result<Registry, Status> {
        Registry::open(self.manager.home()).map_err(jobs_status)
    }

    fn job(&self, id: &JobId) -> std::result::Result<api::Job, Status> {
        let info = self
            .registry()?
            .job(id)
            .map_err(jobs_status)?
            .ok_or_else(|| Status::not_found(format!("unknown job {id}")))?;
        Ok(job_message(&info))
    }
}

fn parse_job_id(text: &str) -> std::result::Result<JobId, Status> {
    text.parse::<JobId>().map_err(jobs_status)
}

type JobStream = Pin<Box<dyn Stream<Item = std::result::Result<api::Job, Status>> + Send>>;

/// How often a watched job is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The gRPC service over the shared state.
pub struct Api(pub Arc<ServiceState>);

impl std::ops::Deref for Api {
    type Target = ServiceState;
    fn deref(&self) -> &ServiceState {
        &self.0
    }
}

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_backfill(
        &self,
        request: Request<api::SubmitBackfillRequest>,
    ) -> std::result::Result<Response<api::SubmitJobResponse>, Status> {
        let r = request.into_inner();
        let feature_set: FeatureSetRef = r.feature_set.parse().map_err(jobs_status)?;
        let statuses = if r.data_statuses.is_empty() {
            vec![DataStatus::None, DataStatus::Incomplete]
        } else {
            r.data_statuses
                .iter()
                .map(|s| DataStatus::parse(s))
                .collect::<almanac_jobs::Result<Vec<_>>>()
                .map_err(jobs_status)?
        };
        let options = BackfillOptions {
            feature_set,
            window: TimeRange {
                start: r.start_us,
                end: r.end_us,
            },
            statuses,
            partition: if r.partition_us == 0 {
                DAY_MICROS
            } else {
                r.partition_us
            },
        };
        let planned = create_backfill(self.manager.home(), &options).map_err(jobs_status)?;
        self.manager.wake();
        let job = match &planned.job {
            Some(id) => Some(self.job(id)?),
            None => None,
        };
        Ok(Response::new(api::SubmitJobResponse {
            job_id: planned.job.map(|j| j.to_string()).unwrap_or_default(),
            job,
            skipped_pending: planned.skipped_pending.into_iter().map(window).collect(),
        }))
    }

    async fn submit_retrieval(
        &self,
        request: Request<api::SubmitRetrievalRequest>,
    ) -> std::result::Result<Response<api::SubmitJobResponse>, Status> {
        let r = request.into_inner();
        let mut retrieval = RetrievalRequest {
            features: r.features,
            local: r.local.into_iter().collect(),
            observations: r.observations,
            observations_format: r.observations_format,
            timestamp_column: r.timestamp_column,
            timestamp_format: r.timestamp_format,
            output: r.output,
            overwrite: r.overwrite,
            rows_per_file: if r.rows_per_file == 0 {
                almanac_jobs::retrieve::DEFAULT_ROWS_PER_FILE
            } else {
                r.rows_per_file
            },
        };
        if let Some(model) = r.model.as_deref().filter(|m| !m.is_empty()) {
            add_model_features(self.manager.home(), model, &mut retrieval).map_err(jobs_status)?;
        }
        let id = create_retrieval(self.manager.home(), &retrieval).map_err(jobs_status)?;
        self.manager.wake();
        Ok(Response::new(api::SubmitJobResponse {
            job_id: id.to_string(),
            job: Some(self.job(&id)?),
            skipped_pending: Vec::new(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<api::GetJobRequest>,
    ) -> std::result::Result<Response<api::Job>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        Ok(Response::new(self.job(&id)?))
    }

    async fn list_jobs(
        &self,
        request: Request<api::ListJobsRequest>,
    ) -> std::result::Result<Response<api::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let feature_set: Option<FeatureSetRef> = if r.feature_set.is_empty() {
            None
        } else {
            Some(r.feature_set.parse().map_err(jobs_status)?)
        };
        let limit = if r.limit == 0 { 20 } else { r.limit as usize };
        let jobs = self
            .registry()?
            .jobs(feature_set.as_ref(), limit)
            .map_err(jobs_status)?;
        Ok(Response::new(api::ListJobsResponse {
            jobs: jobs.iter().map(job_message).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<api::CancelJobRequest>,
    ) -> std::result::Result<Response<api::Job>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        self.job(&id)?;
        self.manager.cancel(&id).await.map_err(jobs_status)?;
        Ok(Response::new(self.job(&id)?))
    }

    async fn retry_job(
        &self,
        request: Request<api::GetJobRequest>,
    ) -> std::result::Result<Response<api::Job>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        self.job(&id)?;
        self.registry()?.reopen_job(&id).map_err(jobs_status)?;
        self.manager.wake();
        Ok(Response::new(self.job(&id)?))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<api::GetJobRequest>,
    ) -> std::result::Result<Response<JobStream>, Status> {
        let id = parse_job_id(&request.into_inner().job_id)?;
        let first = self.job(&id)?;
        let state = Arc::clone(&self.0);
        // Each step sends the job if it changed and ends after a final state.
        let stream = futures::stream::unfold(
            (state, id, Some(first), None::<api::Job>, false),
            |(state, id, next, last, ended)| async move {
                if ended {
                    return None;
                }
                let mut next = next;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => {
                            tokio::time::sleep(WATCH_INTERVAL).await;
                            match state.job(&id) {
                                Ok(job) => job,
                                Err(e) => return Some((Err(e), (state, id, None, last, true))),
                            }
                        }
                    };
                    if last.as_ref() == Some(&job) {
                        continue;
                    }
                    let done = RunState::parse(&job.state).is_final();
                    return Some((Ok(job.clone()), (state, id, None, Some(job), done)));
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cluster_status(
        &self,
        _request: Request<api::ClusterStatusRequest>,
    ) -> std::result::Result<Response<api::ClusterStatusResponse>, Status> {
        let executors = self.cluster.executors().await;
        let (jobs, tasks) = self.registry()?.state_counts().map_err(jobs_status)?;
        let count = |v: &[(String, i64)], s: &str| {
            v.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0) as u32
        };
        Ok(Response::new(api::ClusterStatusResponse {
            version: self.version.clone(),
            executors: executors
                .into_iter()
                .map(|e| api::Executor {
                    id: e.id,
                    host: e.host,
                    port: e.port as u32,
                    slots: e.slots,
                    last_seen_secs: e.last_seen_secs,
                    status: e.status,
                })
                .collect(),
            running_jobs: count(&jobs, "running"),
            queued_jobs: count(&jobs, "queued"),
            running_tasks: count(&tasks, "running"),
            max_running_jobs: self.manager.config().max_running_jobs as u32,
            running_queries: self.cluster.running_queries() as u32,
        }))
    }
}

/// Reading the registry, for `almanac --scheduler entity|featureset|feature|model`.
pub struct RegistryApi(pub Arc<ServiceState>);

impl RegistryApi {
    fn registry(&self) -> std::result::Result<Registry, Status> {
        self.0.registry()
    }

    fn now(&self) -> i64 {
        self.0.now()
    }
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn list_entities(
        &self,
        _request: Request<api::ListEntitiesRequest>,
    ) -> std::result::Result<Response<api::EntityList>, Status> {
        let list = registry_view::entities(&self.registry()?).map_err(jobs_status)?;
        Ok(Response::new(list))
    }

    async fn get_entity(
        &self,
        request: Request<api::AssetRequest>,
    ) -> std::result::Result<Response<api::Entity>, Status> {
        let r = request.into_inner().reference;
        let e = registry_view::get_entity(&self.registry()?, &r).map_err(jobs_status)?;
        Ok(Response::new(e))
    }

    async fn list_feature_sets(
        &self,
        _request: Request<api::ListFeatureSetsRequest>,
    ) -> std::result::Result<Response<api::FeatureSetList>, Status> {
        let list = registry_view::feature_sets(&self.registry()?).map_err(jobs_status)?;
        Ok(Response::new(list))
    }

    async fn get_feature_set(
        &self,
        request: Request<api::AssetRequest>,
    ) -> std::result::Result<Response<api::FeatureSet>, Status> {
        let r = request.into_inner().reference;
        let fs = registry_view::get_feature_set(&self.registry()?, &r, self.now())
            .map_err(jobs_status)?;
        Ok(Response::new(fs))
    }

    async fn list_features(
        &self,
        request: Request<api::ListFeaturesRequest>,
    ) -> std::result::Result<Response<api::FeatureList>, Status> {
        let r = request.into_inner();
        let list = registry_view::features(
            &self.registry()?,
            Some(&r.feature_set),
            Some(&r.search),
            &r.tags,
        )
        .map_err(jobs_status)?;
        Ok(Response::new(list))
    }

    async fn list_models(
        &self,
        _request: Request<api::ListModelsRequest>,
    ) -> std::result::Result<Response<api::ModelList>, Status> {
        let list = registry_view::models(&self.registry()?).map_err(jobs_status)?;
        Ok(Response::new(list))
    }

    async fn get_model(
        &self,
        request: Request<api::AssetRequest>,
    ) -> std::result::Result<Response<api::Model>, Status> {
        let r = request.into_inner().reference;
        let m = registry_view::get_model(&self.registry()?, &r).map_err(jobs_status)?;
        Ok(Response::new(m))
    }

    async fn create_entity(
        &self,
        request: Request<api::PathRequest>,
    ) -> std::result::Result<Response<api::Created>, Status> {
        let path = std::path::PathBuf::from(request.into_inner().path);
        let c = registry_view::create_entity(&mut self.registry()?, &path).map_err(jobs_status)?;
        Ok(Response::new(c))
    }

    async fn create_feature_set(
        &self,
        request: Request<api::PathRequest>,
    ) -> std::result::Result<Response<api::Created>, Status> {
        let path = std::path::PathBuf::from(request.into_inner().path);
        let c =
            registry_view::create_feature_set(&mut self.registry()?, &path).map_err(jobs_status)?;
        Ok(Response::new(c))
    }

    async fn register_model(
        &self,
        request: Request<api::RegisterModelRequest>,
    ) -> std::result::Result<Response<api::Created>, Status> {
        let r = request.into_inner();
        let c = registry_view::register_model(
            &mut self.registry()?,
            &r.name,
            &r.version,
            std::path::Path::new(&r.path),
        )
        .map_err(jobs_status)?;
        Ok(Response::new(c))
    }

    async fn retrieval_spec(
        &self,
        request: Request<api::RetrievalSpecRequest>,
    ) -> std::result::Result<Response<api::RetrievalSpecFile>, Status> {
        let features = request.into_inner().features;
        let file =
            registry_view::retrieval_spec(&self.registry()?, &features).map_err(jobs_status)?;
        Ok(Response::new(file))
    }

    async fn set_schedule(
        &self,
        request: Request<api::SetScheduleRequest>,
    ) -> std::result::Result<Response<api::Schedule>, Status> {
        let r = request.into_inner();
        let def = ScheduleDef::requested(
            r.disable,
            r.every.as_deref(),
            r.cron.as_deref(),
            r.start.as_deref(),
            r.time_zone.as_deref(),
        )
        .map_err(jobs_status)?;
        let s = registry_view::set_schedule(
            &mut self.registry()?,
            &r.reference,
            def.as_ref(),
            self.now(),
        )
        .map_err(jobs_status)?;
        tracing::info!(feature_set = %r.reference, schedule = %s.definition, enabled = s.enabled, "schedule set");
        Ok(Response::new(s))
    }

    async fn set_feature_set_stage(
        &self,
        request: Request<api::SetStageRequest>,
    ) -> std::result::Result<Response<api::StageChanged>, Status> {
        let r = request.into_inner();
        let changed = registry_view::set_stage(&mut self.registry()?, &r.reference, &r.stage)
            .map_err(jobs_status)?;
        Ok(Response::new(changed))
    }
}

/// Serves the job API on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<ServiceState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(JobServiceServer::new(Api(Arc::clone(&state))))
        .add_service(RegistryServiceServer::new(RegistryApi(state)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| SchedulerError::Serve {
            what: "job API",
            message: e.to_string(),
        })
}
