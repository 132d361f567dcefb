//! `almanac entity | featureset | feature`: the registry of the store at `--home`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almanac_jobs::engine::EngineConfig;
use almanac_jobs::registry::{FeatureSetRef, Registry};
use almanac_proto::registry_view;

use almanac_jobs::backfill::{
    BackfillOptions, BackfillReport, TaskOutcome, backfill as run_backfill, retry_job,
};
use almanac_jobs::manager::{RetryPolicy, RunOptions};
use almanac_jobs::materialize::DataStatus;
use almanac_jobs::registry::{JobId, JobInfo};
use almanac_jobs::schedule::ScheduleDef;
use almanac_jobs::spec::Offset;
use almanac_jobs::time::format_instant;

use crate::{BackfillArgs, CliError, EntityCommand, FeatureCommand, FeaturesetCommand, JobCommand};

pub(crate) fn entity(
    home: &Path,
    command: EntityCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        EntityCommand::Create { file } => {
            let c = registry_view::create_entity(&mut Registry::open(home)?, &file)?;
            crate::view::created(&c, out)?;
        }
        EntityCommand::List => {
            crate::view::entities(&registry_view::entities(&Registry::open(home)?)?, out)?;
        }
        EntityCommand::Show { entity } => {
            let e = registry_view::get_entity(&Registry::open(home)?, &entity)?;
            crate::view::entity(&e, out)?;
        }
    }
    Ok(())
}

pub(crate) async fn featureset(
    config: EngineConfig,
    home: &Path,
    command: FeaturesetCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        FeaturesetCommand::Create { file } => {
            let c = registry_view::create_feature_set(&mut Registry::open(home)?, &file)?;
            crate::view::created(&c, out)?;
        }
        FeaturesetCommand::List => {
            crate::view::feature_sets(&registry_view::feature_sets(&Registry::open(home)?)?, out)?;
        }
        FeaturesetCommand::Show { feature_set } => {
            let fs = registry_view::get_feature_set(&Registry::open(home)?, &feature_set, now())?;
            crate::view::feature_set(&fs, out)?;
        }
        FeaturesetCommand::Sample {
            feature_set,
            start,
            end,
            limit,
            output,
        } => {
            let r: FeatureSetRef = feature_set.parse()?;
            let window = crate::commands::window_args(&start, &end)?;
            let registry = Registry::open(home)?;
            let fs = registry.require_feature_set(&r)?;
            if fs.offline_enabled {
                let timeline = registry.timeline(&r)?;
                drop(registry);
                return sample_offline(
                    config,
                    home,
                    &fs,
                    window,
                    &timeline,
                    limit,
                    output.as_deref(),
                    out,
                )
                .await;
            }
            crate::commands::sample_loaded(
                config,
                &fs.spec,
                &format!("feature set {r}"),
                (&start, &end),
                limit,
                output.as_deref(),
                out,
            )
            .await?;
        }
        FeaturesetCommand::Archive { feature_set } => {
            let changed =
                registry_view::set_stage(&mut Registry::open(home)?, &feature_set, "Archived")?;
            crate::view::stage_changed(&changed, out)?;
        }
        FeaturesetCommand::Status { feature_set } => {
            let fs = registry_view::get_feature_set(&Registry::open(home)?, &feature_set, now())?;
            crate::view::status(&fs, out)?;
        }
        FeaturesetCommand::Models { feature_set } => {
            let fs = registry_view::get_feature_set(&Registry::open(home)?, &feature_set, now())?;
            crate::view::models_using(&fs, out)?;
        }
        FeaturesetCommand::Schedule(args) => {
            let def = schedule_def(&args)?;
            let s = registry_view::set_schedule(
                &mut Registry::open(home)?,
                &args.feature_set,
                def.as_ref(),
                now(),
            )?;
            crate::view::schedule_set(&s, out)?;
        }
        FeaturesetCommand::Restore { feature_set } => {
            let changed =
                registry_view::set_stage(&mut Registry::open(home)?, &feature_set, "Development")?;
            crate::view::stage_changed(&changed, out)?;
        }
    }
    Ok(())
}

pub(crate) fn feature(
    home: &Path,
    command: FeatureCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let FeatureCommand::List {
        featureset,
        search,
        tag,
    } = command;
    let list = registry_view::features(
        &Registry::open(home)?,
        featureset.as_deref(),
        search.as_deref(),
        &tag,
    )?;
    crate::view::features(&list, out)
}

/// `almanac backup --to DIR`.
pub(crate) fn backup(home: &Path, to: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    // Opening a registry creates one; a backup of a store that is not there must not.
    if !home.join("registry.db").is_file() {
        return Err(CliError::Usage(format!(
            "there is no store at {} (no registry.db): give the store's --home (or ALMANAC_HOME)",
            home.display()
        )));
    }
    let backup = Registry::open(home)?.backup(to)?;
    writeln!(
        out,
        "backed up {} to {}: the registry and {} registered file(s), {}",
        home.display(),
        to.display(),
        backup.files - 1,
        bytesize::ByteSize(backup.bytes)
    )?;
    Ok(())
}

pub(crate) async fn job(
    home: &Path,
    command: JobCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::remote::{Progress, print_job, print_job_line};
    use almanac_proto::job_message;
    let mut registry = Registry::open(home)?;
    let find = |registry: &Registry, job: &str| -> Result<JobInfo, CliError> {
        let id: JobId = job.parse()?;
        registry
            .job(&id)?
            .ok_or_else(|| CliError::Usage(format!("unknown job {id}")))
    };
    match command {
        JobCommand::List { featureset, limit } => {
            let r: Option<FeatureSetRef> = featureset.map(|f| f.parse()).transpose()?;
            let jobs = registry.jobs(r.as_ref(), limit)?;
            if jobs.is_empty() {
                writeln!(out, "no jobs")?;
            }
            for j in &jobs {
                print_job_line(&job_message(j), out)?;
            }
        }
        JobCommand::Show { job } => print_job(&job_message(&find(&registry, &job)?), out)?,
        JobCommand::Watch { job } => {
            // Another process runs it; follow its record.
            let mut progress = Progress::new();
            let mut last = None;
            let ended = loop {
                let j = job_message(&find(&registry, &job)?);
                if last.as_ref() != Some(&j) {
                    progress.draw(&j);
                }
                if almanac_jobs::registry::RunState::parse(&j.state).is_final() {
                    break j;
                }
                last = Some(j);
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            progress.finish();
            print_job_line(&ended, out)?;
        }
        JobCommand::Cancel { job } => {
            let id: JobId = job.parse()?;
            let state = registry.request_cancel(&id)?;
            if state == almanac_jobs::registry::RunState::Running {
                writeln!(
                    out,
                    "job {id}: cancel requested; the process running it stops before its next task"
                )?;
            }
            print_job_line(&job_message(&find(&registry, &job)?), out)?;
        }
    }
    Ok(())
}

fn print_task(t: &TaskOutcome, out: &mut dyn Write) {
    let line = match &t.result {
        Ok((rows, Some(v))) => format!("{rows} rows, table version {v}"),
        Ok((_, None)) => "already committed by an earlier attempt".to_string(),
        Err(e) => format!("FAILED: {e}"),
    };
    let _ = writeln!(
        out,
        "  task {} [{}, {}) {:.1}s: {line}",
        t.index,
        format_instant(t.window.start),
        format_instant(t.window.end),
        t.elapsed.as_secs_f64()
    );
}

/// The task concurrency and retry policy of `backfill`.
pub(crate) fn run_options(args: &BackfillArgs) -> Result<RunOptions, CliError> {
    let backoff = parse_duration(&args.retry_backoff, "--retry-backoff")?;
    if args.max_attempts == 0 {
        return Err(CliError::Usage(
            "--max-attempts must be at least 1".to_string(),
        ));
    }
    Ok(RunOptions {
        parallel_tasks: args.parallel_tasks.max(1),
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            backoff,
        },
    })
}

/// A duration such as 500ms, 2s, 1m.
pub(crate) fn parse_duration(text: &str, flag: &str) -> Result<Duration, CliError> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number.parse().map_err(|_| {
        CliError::Usage(format!(
            "{flag} '{text}': expected a number and a unit, e.g. 500ms, 2s, 1m"
        ))
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(CliError::Usage(format!(
            "{flag} '{text}': unit must be ms, s or m"
        ))),
    }
}

pub(crate) async fn backfill(
    config: EngineConfig,
    home: &Path,
    args: &BackfillArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Progress lines go to stderr as tasks end; the summary goes to `out`.
    let progress = |t: &TaskOutcome| print_task(t, &mut std::io::stderr());
    let run = run_options(args)?;
    let report: BackfillReport = if let Some(job) = &args.job {
        let id: JobId = job.parse()?;
        let engine = almanac_jobs::engine::Engine::embedded(config).await?;
        retry_job(&engine, home, &id, &run, &progress).await?
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
            .map(DataStatus::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if statuses.contains(&DataStatus::Pending) {
            return Err(CliError::Usage(
                "--data-status Pending: windows held by a running job are never backfilled".into(),
            ));
        }
        let partition = Offset::parse_compact(&args.partition)
            .map_err(|e| CliError::Usage(format!("--partition: {e}")))?
            .micros();
        let options = BackfillOptions {
            feature_set: fs.parse()?,
            window,
            statuses,
            partition,
        };
        let engine = almanac_jobs::engine::Engine::embedded(config).await?;
        run_backfill(&engine, home, &options, &run, &progress).await?
    };
    for p in &report.skipped_pending {
        writeln!(
            out,
            "skipped [{}, {}): another job holds it (Pending)",
            format_instant(p.start),
            format_instant(p.end)
        )?;
    }
    let Some(job) = &report.job else {
        writeln!(
            out,
            "nothing to backfill: no window has the selected data status"
        )?;
        return Ok(());
    };
    writeln!(
        out,
        "job {job} {}: {} task(s), {} failed, {} rows, {:.1}s",
        report.state.map(|s| s.name()).unwrap_or("-"),
        report.tasks.len(),
        report.failed(),
        report.rows(),
        report.elapsed.as_secs_f64()
    )?;
    if report.failed() > 0 {
        return Err(CliError::Usage(format!(
            "{} task(s) of job {job} failed (see `almanac job show {job}`); their windows are \
             Incomplete: retry with `almanac backfill --job {job}`",
            report.failed()
        )));
    }
    Ok(())
}

/// `featureset sample` of a set with offline materialization: what the offline store holds.
#[allow(clippy::too_many_arguments)]
async fn sample_offline(
    config: EngineConfig,
    home: &Path,
    fs: &almanac_jobs::registry::RegisteredFeatureSet,
    window: almanac_jobs::source::TimeRange,
    timeline: &almanac_jobs::materialize::Timeline,
    limit: Option<usize>,
    output: Option<&Path>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use datafusion::prelude::ident;
    let r = &fs.reference;
    let spec = &fs.spec.spec;
    let engine = almanac_jobs::engine::Engine::embedded(config).await?;
    let url = almanac_jobs::offline::table_url(&Registry::open(home)?.offline_root()?, r)?;
    let limit = match (output, limit) {
        (_, Some(l)) => Some(l),
        (None, None) => Some(crate::commands::DEFAULT_PRINT_LIMIT),
        (Some(_), None) => None,
    };
    let batches = match almanac_jobs::offline::read_range(&engine, &url, spec, window).await? {
        None => Vec::new(),
        Some(frame) => {
            let mut order = vec![ident(spec.timestamp_name()).sort(true, true)];
            order.extend(
                spec.index_names()
                    .iter()
                    .map(|k| ident(*k).sort(true, true)),
            );
            frame
                .sort(order)
                .and_then(|df| df.limit(0, limit))
                .map_err(|e| CliError::Usage(format!("cannot read the offline store: {e}")))?
                .collect()
                .await
                .map_err(|e| CliError::Usage(format!("cannot read the offline store: {e}")))?
        }
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match output {
        Some(path) => {
            crate::commands::write_parquet_atomic(path, &batches)?;
            writeln!(
                out,
                "wrote {rows} row(s) of {r} from the offline store to {}",
                path.display()
            )?;
        }
        None => {
            writeln!(
                out,
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(|e| CliError::Usage(e.to_string()))?
            )?;
            writeln!(
                out,
                "{rows} row(s) of {r} from the offline store in [{}, {})",
                format_instant(window.start),
                format_instant(window.end)
            )?;
        }
    }
    for gap in timeline
        .within(window)
        .iter()
        .filter(|i| i.status != DataStatus::Complete)
    {
        writeln!(out, "warning: not materialized: {gap}")?;
    }
    Ok(())
}

/// Where `retrieval-spec create` writes, refusing to replace a file without `--force`.
pub(crate) fn retrieval_spec_target(dir: &Path, force: bool) -> Result<PathBuf, CliError> {
    let file = dir.join(almanac_jobs::spec::RETRIEVAL_SPEC_FILE_NAME);
    if file.exists() && !force {
        return Err(CliError::Usage(format!(
            "{} already exists; pass --force to replace it",
            file.display()
        )));
    }
    Ok(file)
}

/// Writes a retrieval spec made by the registry (here or on a scheduler).
pub(crate) fn write_retrieval_spec(
    file: &Path,
    spec: &almanac_proto::v1::RetrievalSpecFile,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    almanac_jobs::spec::write_atomic(file, spec.yaml.as_bytes())?;
    writeln!(
        out,
        "wrote {} ({} feature(s))",
        file.display(),
        spec.features
    )?;
    Ok(())
}

pub(crate) fn retrieval_spec(
    home: &Path,
    command: crate::RetrievalSpecCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let crate::RetrievalSpecCommand::Create {
        features,
        out: dir,
        force,
    } = command;
    let file = retrieval_spec_target(&dir, force)?;
    let spec = registry_view::retrieval_spec(&Registry::open(home)?, &features)?;
    write_retrieval_spec(&file, &spec, out)
}

pub(crate) fn model(
    home: &Path,
    command: crate::ModelCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        crate::ModelCommand::Register {
            name,
            version,
            path,
        } => {
            let c =
                registry_view::register_model(&mut Registry::open(home)?, &name, &version, &path)?;
            crate::view::created(&c, out)?;
        }
        crate::ModelCommand::List => {
            crate::view::models(&registry_view::models(&Registry::open(home)?)?, out)?;
        }
        crate::ModelCommand::Show { model } => {
            crate::view::model(
                &registry_view::get_model(&Registry::open(home)?, &model)?,
                out,
            )?;
        }
    }
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The schedule `featureset schedule` asks for; `None` to disable.
pub(crate) fn schedule_def(args: &crate::ScheduleArgs) -> Result<Option<ScheduleDef>, CliError> {
    Ok(ScheduleDef::requested(
        args.disable,
        args.every.as_deref(),
        args.cron.as_deref(),
        args.start.as_deref(),
        args.time_zone.as_deref(),
    )?)
}

/// `almanac serve`: the trigger loop and a job manager for scheduled jobs, in this process. It
/// runs only scheduled jobs: backfills are run by the CLI processes that start them.
pub(crate) async fn serve(
    config: EngineConfig,
    home: &Path,
    args: &crate::ServeArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use almanac_jobs::manager::{JobManager, ManagerConfig};
    use almanac_jobs::trigger::{TriggerConfig, TriggerLoop, clock};
    use std::sync::Arc;

    let registry = Registry::open(home)?;
    let scheduled = registry.scheduled_feature_sets()?;
    drop(registry);
    let engine = almanac_jobs::engine::Engine::embedded(config).await?;
    let manager = Arc::new(JobManager::new(
        engine,
        std::path::absolute(home).map_err(|e| CliError::Usage(format!("--home: {e}")))?,
        ManagerConfig {
            max_running_jobs: args.max_running_jobs.max(1),
            run: RunOptions {
                parallel_tasks: 2,
                retry: RetryPolicy {
                    max_attempts: args.max_attempts.max(1),
                    ..RetryPolicy::default()
                },
            },
            poll: Duration::from_millis(500),
            only_kind: Some(almanac_jobs::registry::SCHEDULED),
        },
        None,
    ));
    let triggers = TriggerLoop::new(
        home,
        clock(args.clock_file.as_deref()),
        TriggerConfig {
            catch_up_limit: args.catch_up_limit.max(1),
            ..TriggerConfig::default()
        },
    );
    writeln!(
        out,
        "serving the schedules of {} ({} scheduled feature set version(s)); Ctrl-C stops",
        home.display(),
        scheduled.len()
    )?;
    out.flush()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stop = &stop_tx;
    let jobs = async {
        let r = Arc::clone(&manager).run(stopped(stop_rx.clone())).await;
        stop.send_replace(true);
        r
    };
    let wake = |_: &almanac_jobs::registry::JobId| manager.wake();
    let loop_ = triggers.run(stopped(stop_rx.clone()), &wake);
    let signal = async {
        tokio::select! {
            _ = almanac_jobs::logging::shutdown_signal() => {
                tracing::info!("stopping: running scheduled jobs resume at the next start");
            }
            _ = stopped(stop_rx.clone()) => {}
        }
        stop.send_replace(true);
    };
    let (jobs, (), ()) = tokio::join!(jobs, loop_, signal);
    jobs?;
    Ok(())
}
