//! One function per command; each prints what it did.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use almanac_jobs::compute::{plan_window, sample};
use almanac_jobs::engine::{Engine, EngineConfig};
use almanac_jobs::init::{InitOptions, infer_spec};
use almanac_jobs::retrieve::{
    FeatureRequest, RetrieveOptions, RetrieveSummary, parse_feature_list, parse_local,
    requests_from_spec,
};
use almanac_jobs::sample_data::{SampleDataOptions, generate};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::{
    FeatureRetrievalSpec, LoadedSpec, Offset, SPEC_FILE_NAMES, SourceKind, SourceSpec,
    TimestampColumn, Transformation, write_atomic,
};
use almanac_jobs::time::{format_instant, parse_instant};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::{
    BenchCommand, BenchPlans, Cli, CliError, Command, EngineArgs, InitArgs, ObservationFormat,
    RetrieveArgs, SampleArgs, SampleDataArgs, SourceKindArg, SpecCommand,
};

/// Rows printed by `spec sample` when no --limit is given.
pub(crate) const DEFAULT_PRINT_LIMIT: usize = 20;

pub(crate) async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    // Every flag is checked before any file is read or written.
    let config = engine_config(&cli.engine)?;
    let command = match &cli.scheduler {
        Some(url) => match crate::remote::run(url, cli.command, out).await? {
            // Commands that only read or write local files run here either way.
            Some(local) => local,
            None => return Ok(()),
        },
        None => cli.command,
    };
    if let Some(root) = &cli.offline_root {
        almanac_jobs::registry::Registry::open(&cli.home)?.set_offline_root(root)?;
    }
    match command {
        Command::Quickstart { dir, transactions } => {
            crate::quickstart::quickstart(config, &dir, transactions, out).await
        }
        Command::SampleData(args) => sample_data(&args, out),
        Command::Spec(SpecCommand::Init(args)) => spec_init(config, &args, out).await,
        Command::Spec(SpecCommand::Validate { dir }) => spec_validate(config, &dir, out).await,
        Command::Spec(SpecCommand::Sample(args)) => spec_sample(config, &args, out).await,
        Command::Retrieve(args) => retrieve(config, &cli.home, &args, out).await,
        Command::Bench(command) => bench(config, command, out).await,
        Command::Entity(c) => crate::store::entity(&cli.home, c, out),
        Command::Feature(c) => crate::store::feature(&cli.home, c, out),
        Command::Featureset(c) => crate::store::featureset(config, &cli.home, c, out).await,
        Command::Backfill(args) => crate::store::backfill(config, &cli.home, &args, out).await,
        Command::Serve(args) => crate::store::serve(config, &cli.home, &args, out).await,
        Command::Job(c) => crate::store::job(&cli.home, c, out).await,
        Command::Backup { to } => crate::store::backup(&cli.home, &to, out),
        Command::Cluster(_) => Err(CliError::Usage(
            "there is no cluster: without --scheduler (or ALMANAC_SCHEDULER) the CLI runs \
             everything in this process"
                .to_string(),
        )),
        Command::RetrievalSpec(c) => crate::store::retrieval_spec(&cli.home, c, out),
        Command::Model(c) => crate::store::model(&cli.home, c, out),
        Command::Train {
            data,
            label,
            timestamp_column,
            holdout,
            out: dir,
        } => {
            let (model, m) = almanac_train::train(&almanac_train::TrainOptions {
                data,
                label,
                timestamp_column,
                holdout,
                out: dir.clone(),
            })?;
            writeln!(
                out,
                "trained a logistic regression on {} rows ({} positive) with {} features -> {}",
                m.rows_train,
                m.positives_train,
                model.features.len(),
                dir.display()
            )?;
            writeln!(
                out,
                "held out {} rows from {}: AUC {:.3}",
                m.rows_holdout,
                format_instant(model.holdout_from),
                m.auc_holdout
            )?;
            Ok(())
        }
        Command::Evaluate {
            model,
            data,
            min_auc,
        } => {
            let (auc, rows) = almanac_train::evaluate(&model, &data)?;
            writeln!(
                out,
                "AUC {auc:.3} on {rows} held-out rows (threshold {min_auc})"
            )?;
            if auc < min_auc {
                return Err(CliError::Usage(format!(
                    "the model's AUC {auc:.3} is below the threshold {min_auc}: not registering it"
                )));
            }
            Ok(())
        }
        Command::Predict {
            model,
            data,
            out: file,
        } => {
            let rows = almanac_train::predict(&model, &data, &file)?;
            writeln!(out, "scored {rows} rows -> {}", file.display())?;
            Ok(())
        }
    }
}

fn engine_config(args: &EngineArgs) -> Result<EngineConfig, CliError> {
    let mut config = EngineConfig::default();
    if let Some(p) = args.parallelism {
        if p == 0 {
            return Err(CliError::Usage("--parallelism must be at least 1".into()));
        }
        config.parallelism = p;
        config.target_partitions = p;
    }
    if let Some(limit) = &args.memory_limit {
        let size: bytesize::ByteSize = limit.parse().map_err(|e| {
            CliError::Usage(format!(
                "--memory-limit '{limit}' is not a size such as 512MiB or 4GiB: {e}"
            ))
        })?;
        config.memory_limit = Some(usize::try_from(size.as_u64()).unwrap_or(usize::MAX));
    }
    Ok(config)
}

async fn engine(config: EngineConfig) -> Result<Engine, CliError> {
    Ok(Engine::embedded(config).await?)
}

fn offset_arg(flag: &str, value: &Option<String>) -> Result<Option<Offset>, CliError> {
    value
        .as_deref()
        .map(|v| Offset::parse_compact(v).map_err(|e| CliError::Usage(format!("--{flag}: {e}"))))
        .transpose()
}

pub(crate) fn window_args(start: &str, end: &str) -> Result<TimeRange, CliError> {
    let start = parse_instant(start).map_err(|e| CliError::Usage(format!("--start: {e}")))?;
    let end = parse_instant(end).map_err(|e| CliError::Usage(format!("--end: {e}")))?;
    if start >= end {
        return Err(CliError::Usage(format!(
            "--start ({}) must be before --end ({})",
            format_instant(start),
            format_instant(end)
        )));
    }
    Ok(TimeRange { start, end })
}

fn sample_data(args: &SampleDataArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let start = parse_instant(&args.start).map_err(|e| CliError::Usage(format!("--start: {e}")))?;
    let options = SampleDataOptions {
        accounts: args.accounts,
        transactions: args.transactions,
        days: args.days,
        seed: args.seed,
        start,
        ..SampleDataOptions::default()
    };
    let began = Instant::now();
    let s = generate(&args.out, &options, args.force)?;
    writeln!(
        out,
        "wrote sample data to {} in {:.1}s: {} transactions ({:.2}% fraud), {} account snapshots, \
         {} training and {} batch-inference observations (inference from {})",
        s.root.display(),
        began.elapsed().as_secs_f64(),
        s.transactions,
        s.fraud_rate * 100.0,
        s.account_snapshots,
        s.train_rows,
        s.batch_inference_rows,
        format_instant(s.inference_start)
    )?;
    Ok(())
}

async fn spec_init(
    config: EngineConfig,
    args: &InitArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let target = args.out.join(SPEC_FILE_NAMES[0]);
    if !args.force
        && let Some(existing) = SPEC_FILE_NAMES
            .iter()
            .map(|n| args.out.join(n))
            .find(|p| p.exists())
    {
        return Err(CliError::Usage(format!(
            "{} already exists; pass --force to replace it",
            existing.display()
        )));
    }
    let options = InitOptions {
        source: SourceSpec {
            kind: match args.kind {
                SourceKindArg::Parquet => SourceKind::Parquet,
                SourceKindArg::Csv => SourceKind::Csv,
                SourceKindArg::Delta => SourceKind::Delta,
            },
            path: args.source.clone(),
            timestamp_column: TimestampColumn {
                name: args.timestamp_column.clone(),
                format: args.timestamp_format.clone(),
            },
            source_delay: offset_arg("source-delay", &args.source_delay)?,
        },
        index_columns: args.index_columns.clone(),
        exclude: args.exclude.clone(),
        source_lookback: offset_arg("source-lookback", &args.source_lookback)?,
        temporal_join_lookback: offset_arg("temporal-join-lookback", &args.temporal_join_lookback)?,
    };
    let cwd = std::env::current_dir().map_err(CliError::Output)?;
    let engine = engine(config).await?;
    let spec = infer_spec(&engine, &options, &cwd).await?;
    write_atomic(&target, spec.to_yaml().as_bytes())?;
    writeln!(
        out,
        "wrote {} with {} feature(s) and index column(s) {}",
        target.display(),
        spec.features.len(),
        spec.index_names().join(", ")
    )?;
    for f in &spec.features {
        writeln!(out, "  {} {}", f.name, f.data_type)?;
    }
    Ok(())
}

fn transformation_kind(loaded: &LoadedSpec) -> &'static str {
    match &loaded.spec.feature_transformation {
        None => "precomputed",
        Some(Transformation::Sql(_)) => "sql",
        Some(Transformation::TransformationExpressions(_)) => "window aggregation",
    }
}

async fn spec_validate(
    config: EngineConfig,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let loaded = LoadedSpec::load(dir)?;
    let engine = engine(config).await?;
    // Planning any window opens the source and checks the transformation's output schema.
    let planned = plan_window(&engine, &loaded, TimeRange { start: 0, end: 1 }).await?;
    writeln!(
        out,
        "ok: {} — {} index column(s), {} feature(s), {} transformation over {}",
        loaded.file.display(),
        loaded.spec.index_columns.len(),
        loaded.spec.features.len(),
        transformation_kind(&loaded),
        planned.source.location
    )?;
    Ok(())
}

async fn spec_sample(
    config: EngineConfig,
    args: &SampleArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Flags are checked before any file is read.
    window_args(&args.start, &args.end)?;
    let loaded = LoadedSpec::load(&args.dir)?;
    let label = loaded.file.display().to_string();
    sample_loaded(
        config,
        &loaded,
        &label,
        (&args.start, &args.end),
        args.limit,
        args.output.as_deref(),
        out,
    )
    .await
}

/// Computes a spec's features over `[start, end)` and prints them or writes them to `output`.
pub(crate) async fn sample_loaded(
    config: EngineConfig,
    loaded: &LoadedSpec,
    label: &str,
    (start, end): (&str, &str),
    limit: Option<usize>,
    output: Option<&Path>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let window = window_args(start, end)?;
    let limit = match (output, limit) {
        (_, Some(l)) => Some(l),
        (None, None) => Some(DEFAULT_PRINT_LIMIT),
        (Some(_), None) => None,
    };
    let engine = engine(config).await?;
    let began = Instant::now();
    let batches = sample(&engine, loaded, window, limit).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    match output {
        Some(path) => {
            write_parquet_atomic(path, &batches)?;
            writeln!(
                out,
                "wrote {rows} row(s) to {} in {:.2}s",
                path.display(),
                began.elapsed().as_secs_f64()
            )?;
        }
        None => {
            writeln!(
                out,
                "{}",
                pretty_format_batches(&batches).map_err(|e| CliError::Usage(e.to_string()))?
            )?;
            let more = if Some(rows) == limit {
                " (limited; use --limit N for more)"
            } else {
                ""
            };
            writeln!(
                out,
                "{rows} row(s){more} of {label} in [{}, {}), {:.2}s",
                format_instant(window.start),
                format_instant(window.end),
                began.elapsed().as_secs_f64()
            )?;
        }
    }
    Ok(())
}

/// Writes batches to one parquet file through a temporary sibling, so a failure leaves nothing.
pub(crate) fn write_parquet_atomic(path: &Path, batches: &[RecordBatch]) -> Result<(), CliError> {
    use datafusion::parquet::arrow::ArrowWriter;
    let Some(first) = batches.first() else {
        return Err(CliError::Usage(
            "no rows in the window; nothing written".into(),
        ));
    };
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, first.schema(), None)
        .map_err(|e| CliError::Usage(format!("parquet: {e}")))?;
    for b in batches {
        writer
            .write(b)
            .map_err(|e| CliError::Usage(format!("parquet: {e}")))?;
    }
    writer
        .close()
        .map_err(|e| CliError::Usage(format!("parquet: {e}")))?;
    write_atomic(path, &buf)?;
    Ok(())
}

pub(crate) fn retrieve_options(args: &RetrieveArgs) -> Result<RetrieveOptions, CliError> {
    let mut local = std::collections::BTreeMap::new();
    for l in &args.local {
        let (name, dir) = parse_local(l)?;
        if local.insert(name.clone(), dir).is_some() {
            return Err(CliError::Usage(format!("--local {name} is given twice")));
        }
    }
    let mut requests: Vec<FeatureRequest> = Vec::new();
    if let Some(spec) = &args.spec {
        let spec = FeatureRetrievalSpec::load(spec)?;
        requests.extend(requests_from_spec(&spec, &mut local)?);
    }
    for f in &args.features {
        requests.extend(parse_feature_list(f)?);
    }
    Ok(RetrieveOptions {
        requests,
        local,
        observations: args.observations.clone(),
        observations_format: args.observations_format.map(|f| match f {
            ObservationFormat::Parquet => SourceKind::Parquet,
            ObservationFormat::Csv => SourceKind::Csv,
        }),
        timestamp_column: args.timestamp_column.clone(),
        timestamp_format: args.timestamp_format.clone(),
        output: args.output.clone(),
        overwrite: args.overwrite,
        rows_per_file: args.rows_per_file,
        home: None,
    })
}

async fn retrieve(
    config: EngineConfig,
    home: &Path,
    args: &RetrieveArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // `--model N:V` is `--spec` pointing at the registered model's stored folder.
    let mut args = args.clone();
    if let Some(model) = &args.model {
        let r: almanac_jobs::registry::ModelRef = model.parse()?;
        let registry = almanac_jobs::registry::Registry::open(home)?;
        let info = registry.model(&r)?.ok_or_else(|| {
            CliError::Usage(format!(
                "unknown model {r} in {}",
                registry.home().display()
            ))
        })?;
        args.spec = Some(info.dir);
    }
    let mut options = retrieve_options(&args)?;
    options.home = Some(home.to_path_buf());
    let engine = engine(config).await?;
    let summary = almanac_jobs::retrieve::retrieve(&engine, &options).await?;
    print_retrieval(&summary, "", out)
}

pub(crate) fn print_retrieval(
    s: &RetrieveSummary,
    indent: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let secs = s.elapsed.as_secs_f64();
    writeln!(
        out,
        "{indent}retrieved {} observation rows -> {} ({} file(s)) in {secs:.2}s ({:.0} rows/s)",
        s.rows_in,
        s.output.display(),
        s.files,
        s.rows_in as f64 / secs.max(1e-9)
    )?;
    writeln!(
        out,
        "{indent}  rows in {}, rows out {}",
        s.rows_in, s.rows_out
    )?;
    for (set, matched) in &s.matches {
        writeln!(
            out,
            "{indent}  {set}: {matched} of {} rows matched a feature row",
            s.rows_in
        )?;
    }
    for (set, gaps) in &s.incomplete {
        writeln!(
            out,
            "{indent}  warning: {set} is not materialized over all the time these observations \
             need; rows there got no values from it (backfill them, then retrieve again):"
        )?;
        for g in gaps {
            writeln!(out, "{indent}    {g}")?;
        }
    }
    Ok(())
}

async fn bench(
    config: EngineConfig,
    command: BenchCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use almanac_jobs::bench::{BenchPhases, BenchScale, prepare, run};
    use almanac_jobs::compute::WindowPlan;
    let (args, features, backfill, retrieve) = match &command {
        BenchCommand::All(a) => (a, true, true, true),
        BenchCommand::Features(a) => (a, true, false, false),
        BenchCommand::Backfill(a) => (a, false, true, false),
        BenchCommand::Retrieve(a) => (a, false, false, true),
    };
    if !(0.0..1.0).contains(&args.hot_key_share) {
        return Err(CliError::Usage(format!(
            "--hot-key-share {}: expected a share from 0 up to (not including) 1, e.g. 0.02",
            args.hot_key_share
        )));
    }
    if args.task_days == 0 {
        return Err(CliError::Usage(
            "--task-days 0: expected a whole number of days, at least 1".to_string(),
        ));
    }
    if let Some(s) = args.zipf
        && !(s.is_finite() && s > 0.0)
    {
        return Err(CliError::Usage(format!(
            "--zipf {s}: expected a positive exponent, e.g. 1.1"
        )));
    }
    let scale = BenchScale {
        observations: args.observations,
        transactions: args.transactions,
        accounts: args.accounts,
        days: args.days,
        seed: args.seed,
        hot_key_share: args.hot_key_share,
        zipf: args.zipf,
    };
    let account_rows = prepare(&args.dir, &scale)?;
    let phases = BenchPhases {
        features: match (features, args.plans) {
            (false, _) => Vec::new(),
            (true, BenchPlans::Both) => vec![WindowPlan::Native, WindowPlan::WindowFunctions],
            (true, BenchPlans::Operator) => vec![WindowPlan::Native],
            (true, BenchPlans::WindowFunctions) => vec![WindowPlan::WindowFunctions],
        },
        backfill_task_days: backfill.then_some(args.task_days),
        retrieve,
    };
    let engine = engine(config.clone()).await?;
    let report = run(&engine, &config, &args.dir, &scale, account_rows, &phases).await?;
    if args.json {
        let json = serde_json::to_string(&report)
            .map_err(|e| CliError::Usage(format!("cannot print the report: {e}")))?;
        writeln!(out, "{json}")?;
        return Ok(());
    }
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
            .unwrap_or_else(|| "unknown".to_string())
    };
    let m = &report.machine;
    writeln!(
        out,
        "{} transactions, {} accounts, {} days{}; {} build, {} cores, parallelism {}, {} partitions, memory limit {}",
        scale.transactions,
        scale.accounts,
        scale.days,
        if scale.hot_key_share > 0.0 {
            format!(
                ", one account with {:.1}% of them",
                scale.hot_key_share * 100.0
            )
        } else {
            String::new()
        } + &scale
            .zipf
            .map(|s| format!(", Zipf-distributed accounts (s = {s})"))
            .unwrap_or_default(),
        m.build,
        m.cores,
        m.parallelism,
        m.target_partitions,
        m.memory_limit_bytes
            .map(|b| mib(Some(b as u64)))
            .unwrap_or_else(|| "none".to_string())
    )?;
    for f in &report.features {
        writeln!(
            out,
            "features ({}): {:.2}s, {:.0} source rows/s, {} rows out, peak memory {}",
            f.plan,
            f.phase.elapsed_s,
            f.source_rows_per_s,
            f.output_rows,
            mib(f.phase.peak_rss_bytes)
        )?;
    }
    if let Some(x) = report.window_operator_speedup {
        writeln!(
            out,
            "  the window operator is {x:.1}x as fast as window functions"
        )?;
    }
    if let Some(b) = &report.backfill {
        writeln!(
            out,
            "backfill: {} tasks of {} day(s), {:.2}s, {} rows ({:.0} rows/s), {} files ({}), peak memory {}",
            b.tasks,
            b.task_days,
            b.phase.elapsed_s,
            b.rows_written,
            b.rows_per_s,
            b.files_written,
            mib(Some(b.bytes_written)),
            mib(b.phase.peak_rss_bytes)
        )?;
    }
    if let Some(r) = &report.retrieve {
        writeln!(
            out,
            "retrieve: {} observations x {} features ({} account rows): {:.2}s, {:.0} observation rows/s, peak memory {}",
            r.observations,
            r.features,
            r.account_rows,
            r.phase.elapsed_s,
            r.observation_rows_per_s,
            mib(r.phase.peak_rss_bytes)
        )?;
        for (set, matched) in &r.matches {
            writeln!(out, "  {set}: {matched} matched")?;
        }
    }
    Ok(())
}
