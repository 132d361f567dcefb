//! `--scheduler`: the CLI as a client of a scheduler's job API.
//!
//! Jobs (backfill, retrieval) are submitted to the cluster and followed with a progress bar;
//! `job` and `cluster` commands, and the registry's read commands, ask the scheduler. Commands that only read or write local
//! files run in this process as without a scheduler. Jobs are shown the same way in both
//! modes ([`print_job_line`], [`print_job`], [`Progress`]).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use almanac_jobs::manager::RetrievalRequest;
use almanac_jobs::materialize::DataStatus;
use almanac_jobs::spec::Offset;
use almanac_jobs::time::format_instant;
use almanac_proto::v1::job_service_client::JobServiceClient;
use almanac_proto::v1::{self as api};
use tonic::transport::{Channel, Endpoint};

use almanac_proto::v1::registry_service_client::RegistryServiceClient;

use crate::{
    BackfillArgs, CliError, ClusterCommand, Command, EntityCommand, FeatureCommand,
    FeaturesetCommand, JobCommand, ModelCommand, RetrieveArgs,
};

/// How long the CLI waits for a scheduler to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `command` against the scheduler at `url`. Returns the command back when it is one
/// that runs locally whatever the mode.
pub(crate) async fn run(
    url: &str,
    command: Command,
    out: &mut dyn Write,
) -> Result<Option<Command>, CliError> {
    if let Command::Serve(_) = &command {
        return Err(CliError::Usage(
            "`almanac serve` runs a store's schedules in this process; with --scheduler, that \
             scheduler triggers them itself: drop --scheduler, or just let the scheduler run"
                .to_string(),
        ));
    }
    let not_yet = match &command {
        Command::Featureset(FeaturesetCommand::Sample { .. }) => Some("featureset sample"),
        Command::Backfill(_)
        | Command::Retrieve(_)
        | Command::Job(_)
        | Command::Cluster(_)
        | Command::Entity(_)
        | Command::Featureset(_)
        | Command::Feature(_)
        | Command::Model(_)
        | Command::RetrievalSpec(_) => None,
        // Commands on local files run here either way.
        _ => return Ok(Some(command)),
    };
    if let Some(what) = not_yet {
        return Err(CliError::Usage(format!(
            "`almanac {what}` changes or computes from the store's registry directly and is not \
             part of the job API yet; run it without --scheduler against the store's --home"
        )));
    }
    let channel = connect(url).await?;
    let mut client = JobServiceClient::new(channel.clone());
    let mut registry = RegistryServiceClient::new(channel);
    match command {
        Command::Backfill(args) => backfill(&mut client, &args, out).await?,
        Command::Retrieve(args) => retrieve(&mut client, &args, out).await?,
        Command::Job(c) => job(&mut client, c, out).await?,
        Command::Cluster(ClusterCommand::Status) => cluster_status(&mut client, out).await?,
        other => read_registry(&mut registry, other, out).await?,
    }
    Ok(None)
}

/// A local path made absolute: the scheduler reads it (a shared file system, or this machine).
fn path(p: &std::path::Path) -> Result<api::PathRequest, CliError> {
    let absolute = std::path::absolute(p)
        .map_err(|e| CliError::Usage(format!("cannot resolve {}: {e}", p.display())))?;
    Ok(api::PathRequest {
        path: absolute.display().to_string(),
    })
}

async fn stage(
    client: &mut RegistryServiceClient<Channel>,
    reference: String,
    stage: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let changed = client
        .set_feature_set_stage(api::SetStageRequest {
            reference,
            stage: stage.to_string(),
        })
        .await
        .map_err(refused)?;
    crate::view::stage_changed(&changed.into_inner(), out)
}

/// The registry's commands, answered by the scheduler.
async fn read_registry(
    client: &mut RegistryServiceClient<Channel>,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let asset = |reference: String| api::AssetRequest { reference };
    match command {
        Command::Entity(EntityCommand::List) => {
            let list = client.list_entities(api::ListEntitiesRequest {}).await;
            crate::view::entities(&list.map_err(refused)?.into_inner(), out)
        }
        Command::Entity(EntityCommand::Show { entity }) => {
            let e = client.get_entity(asset(entity)).await.map_err(refused)?;
            crate::view::entity(&e.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::List) => {
            let list = client
                .list_feature_sets(api::ListFeatureSetsRequest {})
                .await;
            crate::view::feature_sets(&list.map_err(refused)?.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Show { feature_set }) => {
            let fs = client.get_feature_set(asset(feature_set)).await;
            crate::view::feature_set(&fs.map_err(refused)?.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Status { feature_set }) => {
            let fs = client.get_feature_set(asset(feature_set)).await;
            crate::view::status(&fs.map_err(refused)?.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Schedule(args)) => {
            // Checked here too, so a bad flag fails the same way in both modes.
            crate::store::schedule_def(&args)?;
            let s = client
                .set_schedule(api::SetScheduleRequest {
                    reference: args.feature_set,
                    every: args.every,
                    cron: args.cron,
                    start: args.start,
                    time_zone: args.time_zone,
                    disable: args.disable,
                })
                .await;
            crate::view::schedule_set(&s.map_err(refused)?.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Models { feature_set }) => {
            let fs = client.get_feature_set(asset(feature_set)).await;
            crate::view::models_using(&fs.map_err(refused)?.into_inner(), out)
        }
        Command::Feature(FeatureCommand::List {
            featureset,
            search,
            tag,
        }) => {
            let list = client
                .list_features(api::ListFeaturesRequest {
                    feature_set: featureset.unwrap_or_default(),
                    search: search.unwrap_or_default(),
                    tags: tag,
                })
                .await;
            crate::view::features(&list.map_err(refused)?.into_inner(), out)
        }
        Command::Model(ModelCommand::List) => {
            let list = client.list_models(api::ListModelsRequest {}).await;
            crate::view::models(&list.map_err(refused)?.into_inner(), out)
        }
        Command::Model(ModelCommand::Show { model }) => {
            let m = client.get_model(asset(model)).await.map_err(refused)?;
            crate::view::model(&m.into_inner(), out)
        }
        Command::Entity(EntityCommand::Create { file }) => {
            let c = client.create_entity(path(&file)?).await.map_err(refused)?;
            crate::view::created(&c.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Create { file }) => {
            let c = client
                .create_feature_set(path(&file)?)
                .await
                .map_err(refused)?;
            crate::view::created(&c.into_inner(), out)
        }
        Command::Model(ModelCommand::Register {
            name,
            version,
            path: folder,
        }) => {
            let c = client
                .register_model(api::RegisterModelRequest {
                    name,
                    version,
                    path: path(&folder)?.path,
                })
                .await
                .map_err(refused)?;
            crate::view::created(&c.into_inner(), out)
        }
        Command::RetrievalSpec(crate::RetrievalSpecCommand::Create {
            features,
            out: dir,
            force,
        }) => {
            let file = crate::store::retrieval_spec_target(&dir, force)?;
            let spec = client
                .retrieval_spec(api::RetrievalSpecRequest { features })
                .await
                .map_err(refused)?;
            crate::store::write_retrieval_spec(&file, &spec.into_inner(), out)
        }
        Command::Featureset(FeaturesetCommand::Archive { feature_set }) => {
            stage(client, feature_set, "Archived", out).await
        }
        Command::Featureset(FeaturesetCommand::Restore { feature_set }) => {
            stage(client, feature_set, "Development", out).await
        }
        _ => Ok(()),
    }
}

async fn connect(url: &str) -> Result<Channel, CliError> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(full.clone())
        .map_err(|e| {
            CliError::Usage(format!(
                "--scheduler '{url}': {e}; expected HOST:PORT or http://HOST:PORT"
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| {
            CliError::Remote(format!(
                "the scheduler at {full} does not answer (no connection within {}s); is \
                 `almanac-scheduler` running there, with --bind at that address?",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            CliError::Remote(format!(
                "the scheduler at {full} does not answer ({}); is `almanac-scheduler` running \
                 there, with --bind at that address?",
                almanac_proto::error_chain(&e)
            ))
        })?;
    Ok(channel)
}

fn refused(status: tonic::Status) -> CliError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            CliError::Usage(status.message().to_string())
        }
        tonic::Code::Unavailable => CliError::Remote(format!(
            "the scheduler stopped answering: {}",
            status.message()
        )),
        _ => CliError::Remote(format!("the scheduler failed: {}", status.message())),
    }
}

async fn backfill(
    client: &mut JobServiceClient<Channel>,
    args: &BackfillArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    crate::store::run_options(args)?;
    let submitted = if let Some(job) = &args.job {
        let job = client
            .retry_job(api::GetJobRequest {
                job_id: job.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        writeln!(out, "job {} queued again", job.id)?;
        job
    } else {
        let (Some(fs), Some(start), Some(end)) = (&args.feature_set, &args.start, &args.end) else {
            return Err(CliError::Usage(
                "give NAME:VERSION --start T --end T, or --job ID to retry a job".into(),
            ));
        };
        let window = crate::commands::window_args(start, end)?;
        let statuses = args
            .data_status
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| DataStatus::parse(s).map(|d| d.name().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let partition = Offset::parse_compact(&args.partition)
            .map_err(|e| CliError::Usage(format!("--partition: {e}")))?
            .micros();
        let response = client
            .submit_backfill(api::SubmitBackfillRequest {
                feature_set: fs.clone(),
                start_us: window.start,
                end_us: window.end,
                data_statuses: statuses,
                partition_us: partition,
            })
            .await
            .map_err(refused)?
            .into_inner();
        for p in &response.skipped_pending {
            writeln!(
                out,
                "skipped [{}, {}): another job holds it (Pending)",
                format_instant(p.start_us),
                format_instant(p.end_us)
            )?;
        }
        let Some(job) = response.job else {
            writeln!(
                out,
                "nothing to backfill: no window has the selected data status"
            )?;
            return Ok(());
        };
        writeln!(out, "job {} queued: {} task(s)", job.id, job.tasks_total)?;
        job
    };
    if !args.wait {
        writeln!(out, "follow it with `almanac job watch {}`", submitted.id)?;
        return Ok(());
    }
    let job = watch(client, &submitted.id).await?;
    print_job_line(&job, out)?;
    ended_well(&job)
}

/// An error unless the job succeeded.
fn ended_well(job: &api::Job) -> Result<(), CliError> {
    if job.state == "succeeded" {
        return Ok(());
    }
    Err(CliError::Remote(format!(
        "job {} {}{} (see `almanac job show {}`)",
        job.id,
        job.state,
        job.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default(),
        job.id
    )))
}

async fn retrieve(
    client: &mut JobServiceClient<Channel>,
    args: &RetrieveArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // The model's packaged spec is read by the scheduler, from its registry.
    let options = crate::commands::retrieve_options(args)?;
    let request = RetrievalRequest::from_options(&options)?;
    let response = client
        .submit_retrieval(api::SubmitRetrievalRequest {
            features: request.features,
            local: request.local.into_iter().collect(),
            observations: request.observations,
            observations_format: request.observations_format,
            timestamp_column: request.timestamp_column,
            timestamp_format: request.timestamp_format,
            output: request.output,
            overwrite: request.overwrite,
            rows_per_file: request.rows_per_file,
            model: args.model.clone(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let job = watch(client, &response.job_id).await?;
    ended_well(&job)?;
    writeln!(
        out,
        "retrieved {} rows -> {} (job {})",
        job.rows,
        job.output.as_deref().unwrap_or("-"),
        job.id
    )?;
    Ok(())
}

async fn job(
    client: &mut JobServiceClient<Channel>,
    command: JobCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        JobCommand::List { featureset, limit } => {
            let jobs = client
                .list_jobs(api::ListJobsRequest {
                    feature_set: featureset.unwrap_or_default(),
                    limit: limit as u32,
                })
                .await
                .map_err(refused)?
                .into_inner()
                .jobs;
            if jobs.is_empty() {
                writeln!(out, "no jobs")?;
            }
            for j in &jobs {
                print_job_line(j, out)?;
            }
        }
        JobCommand::Show { job } => {
            let j = client
                .get_job(api::GetJobRequest { job_id: job })
                .await
                .map_err(refused)?
                .into_inner();
            print_job(&j, out)?;
        }
        JobCommand::Watch { job } => {
            let j = watch(client, &job).await?;
            print_job_line(&j, out)?;
        }
        JobCommand::Cancel { job } => {
            let j = client
                .cancel_job(api::CancelJobRequest { job_id: job })
                .await
                .map_err(refused)?
                .into_inner();
            let j = if j.state == "running" {
                // It stops at once; wait for its end to be recorded.
                watch(client, &j.id).await?
            } else {
                j
            };
            print_job_line(&j, out)?;
        }
    }
    Ok(())
}

/// Follows a job to its end, drawing progress on stderr; returns the job as it ended.
async fn watch(client: &mut JobServiceClient<Channel>, id: &str) -> Result<api::Job, CliError> {
    let mut stream = client
        .watch_job(api::GetJobRequest {
            job_id: id.to_string(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut progress = Progress::new();
    let mut last = None;
    while let Some(job) = stream.message().await.map_err(refused)? {
        progress.draw(&job);
        last = Some(job);
    }
    progress.finish();
    last.ok_or_else(|| CliError::Remote(format!("the scheduler sent nothing about job {id}")))
}

async fn cluster_status(
    client: &mut JobServiceClient<Channel>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let s = client
        .cluster_status(api::ClusterStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let active: Vec<&api::Executor> = s
        .executors
        .iter()
        .filter(|e| e.status == "active")
        .collect();
    writeln!(
        out,
        "almanac {}: {} active executor(s), {} slot(s); jobs running {} (at most {}), queued {}; tasks running {}; queries on the cluster {}",
        s.version,
        active.len(),
        active.iter().map(|e| e.slots).sum::<u32>(),
        s.running_jobs,
        s.max_running_jobs,
        s.queued_jobs,
        s.running_tasks,
        s.running_queries
    )?;
    for e in &s.executors {
        writeln!(
            out,
            "  {}  {}:{}  {} slot(s)  {}  last seen {}s ago",
            e.id, e.host, e.port, e.slots, e.status, e.last_seen_secs
        )?;
    }
    Ok(())
}

/// One line per job.
pub(crate) fn print_job_line(j: &api::Job, out: &mut dyn Write) -> Result<(), CliError> {
    let what = if j.feature_set.is_empty() {
        format!("-> {}", j.output.as_deref().unwrap_or("-"))
    } else {
        let w = j.window.unwrap_or_default();
        format!(
            "{}  [{}, {})",
            j.feature_set,
            format_instant(w.start_us),
            format_instant(w.end_us)
        )
    };
    writeln!(
        out,
        "  {}  {}  {what}  tasks {}/{}  rows {}  updated {}{}",
        j.id,
        j.state,
        j.tasks_done - j.tasks_failed,
        j.tasks_total,
        j.rows,
        j.updated_at,
        j.error
            .as_ref()
            .map(|e| format!("\n    error: {e}"))
            .unwrap_or_default()
    )?;
    Ok(())
}

/// A job with its tasks.
pub(crate) fn print_job(j: &api::Job, out: &mut dyn Write) -> Result<(), CliError> {
    print_job_line(j, out)?;
    for t in &j.tasks {
        let w = t.window.unwrap_or_default();
        let window = if w.end_us > w.start_us {
            format!(
                "[{}, {})  ",
                format_instant(w.start_us),
                format_instant(w.end_us)
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "    task {}  {window}{}  attempts {}  rows {}  version {}{}",
            t.index,
            t.state,
            t.attempts,
            t.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            t.table_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            t.error
                .as_ref()
                .map(|e| format!("\n      error: {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per change otherwise.
pub(crate) struct Progress {
    started: Instant,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub(crate) fn draw(&mut self, job: &api::Job) {
        let total = job.tasks_total.max(1) as usize;
        let done = job.tasks_done as usize;
        let width = 30;
        let filled = (width * done / total).min(width);
        // Elapsed time is the job's own when it has started, else this watch's.
        let elapsed = job
            .started_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                let end = job
                    .finished_at
                    .as_deref()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_else(chrono::Utc::now);
                (end - t.with_timezone(&chrono::Utc))
                    .to_std()
                    .unwrap_or_default()
            })
            .unwrap_or_else(|| self.started.elapsed());
        let eta = if done > 0 && done < total {
            let per_task = elapsed.as_secs_f64() / done as f64;
            format!("  ETA {:.0}s", per_task * (total - done) as f64)
        } else {
            String::new()
        };
        let failed = if job.tasks_failed > 0 {
            format!(", {} failed", job.tasks_failed)
        } else {
            String::new()
        };
        let line = format!(
            "[{}{}] {done}/{total} tasks{failed}  {} rows  {:.0}s{eta}  {}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            job.rows,
            elapsed.as_secs_f64(),
            job.state
        );
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.drawn = true;
    }

    pub(crate) fn finish(&mut self) {
        if self.terminal && self.drawn {
            eprintln!();
        }
    }
}
