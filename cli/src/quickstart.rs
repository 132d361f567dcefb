//! `almanac quickstart`: the managed feature store tutorial end to end, embedded, on generated
//! data. Every step is a library call that a CLI command also makes; the printed lines say
//! which command a user would run.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use almanac_jobs::backfill::{BackfillOptions, TaskOutcome, backfill};
use almanac_jobs::compute::sample;
use almanac_jobs::engine::{Engine, EngineConfig};
use almanac_jobs::init::{InitOptions, infer_spec};
use almanac_jobs::manager::RunOptions;
use almanac_jobs::materialize::DataStatus;
use almanac_jobs::registry::{FeatureFilter, FeatureSetRef, ModelRef, Registry};
use almanac_jobs::retrieve::{RetrieveOptions, parse_feature_list, registered_spec, retrieve};
use almanac_jobs::sample_data::{SampleDataOptions, generate};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::{
    EntitySpec, LoadedSpec, Offset, RETRIEVAL_SPEC_FILE_NAME, SourceKind, SourceSpec,
    TimestampColumn, write_atomic,
};
use almanac_jobs::time::format_instant;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::CliError;

const DAY: i64 = 86_400_000_000;
const TRANSACTIONS_SPEC: &str =
    include_str!("../../examples/fraud/featuresets/transactions/spec/FeatureSetSpec.yaml");
const TRANSACTIONS_ASSET: &str =
    include_str!("../../examples/fraud/featuresets/transactions/featureset_asset.yaml");
const ACCOUNT_ENTITY: &str = include_str!("../../examples/fraud/entities/account.yaml");
/// The tutorial registers the accounts set with offline materialization too.
const ACCOUNTS_ASSET: &str = "name: accounts\nversion: '1'\ndescription: Precomputed account \
attributes, refreshed weekly\nspecification:\n  path: ./spec\nentities:\n  - azureml:account:1\n\
tags:\n  team: fraud\nmaterialization_settings:\n  offline_enabled: true\n";
const TRAINING_FEATURES: &str = "transactions:1:transaction_amount_7d_sum,\
transactions:1:transaction_3d_count,transactions:1:transaction_amount_3d_avg,\
accounts:1:isUserRegistered,accounts:1:numPaymentRejects1dPerUser,accounts:1:accountAge";

fn preview(
    batches: &[datafusion::arrow::array::RecordBatch],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let table = pretty_format_batches(batches)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .to_string();
    for line in table.lines() {
        writeln!(out, "   {line}")?;
    }
    Ok(())
}

/// A one-line progress bar on stderr, redrawn as tasks end.
fn progress_bar(total: usize) -> impl Fn(&TaskOutcome) + Sync {
    let done = AtomicUsize::new(0);
    move |t: &TaskOutcome| {
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        let width = 30;
        let filled = width * n / total.max(1);
        let status = if t.result.is_ok() {
            ""
        } else {
            " (a task failed)"
        };
        eprint!(
            "\r   [{}{}] {n}/{total} tasks{status}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if n == total {
            eprintln!();
        }
    }
}

async fn run_backfill(
    engine: &Engine,
    home: &Path,
    set: &FeatureSetRef,
    window: TimeRange,
    partition: i64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let tasks = ((window.end - window.start) + partition - 1) / partition;
    let options = BackfillOptions {
        feature_set: set.clone(),
        window,
        statuses: vec![DataStatus::None, DataStatus::Incomplete],
        partition,
    };
    let t = Instant::now();
    let report = backfill(
        engine,
        home,
        &options,
        &RunOptions::default(),
        &progress_bar(tasks as usize),
    )
    .await?;
    if report.failed() > 0 {
        return Err(CliError::Usage(format!(
            "{} backfill task(s) of {set} failed; see `almanac job show`",
            report.failed()
        )));
    }
    writeln!(
        out,
        "   almanac backfill {set} --start {} --end {} --partition {}d: {} task(s), {} rows into the offline store, {:.1}s",
        &format_instant(window.start)[..10],
        &format_instant(window.end)[..10],
        partition / DAY,
        report.tasks.len(),
        report.rows(),
        t.elapsed().as_secs_f64()
    )?;
    Ok(())
}

pub(crate) async fn quickstart(
    config: EngineConfig,
    dir: &Path,
    transactions: usize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let began = Instant::now();
    let dir = std::path::absolute(dir).map_err(CliError::Output)?;
    writeln!(
        out,
        "Almanac quickstart in {} (embedded Ballista engine)",
        dir.display()
    )?;
    let home = dir.join(".almanac");
    if home.exists() {
        // Registered versions are immutable: a rerun starts its store over rather than collide.
        std::fs::remove_dir_all(&home).map_err(CliError::Output)?;
        writeln!(
            out,
            "(starting over: removed the store of the previous run)"
        )?;
    }

    writeln!(out, "\n1. sample data")?;
    let data = dir.join("data");
    let options = SampleDataOptions {
        transactions,
        ..SampleDataOptions::default()
    };
    let s = generate(&data, &options, true)?;
    writeln!(
        out,
        "   {} transactions, {} account snapshots, {} training and {} batch-inference observations -> {}",
        s.transactions,
        s.account_snapshots,
        s.train_rows,
        s.batch_inference_rows,
        data.display()
    )?;
    let engine = Engine::embedded(config).await?;
    let all = TimeRange {
        start: options.start,
        end: options.start + i64::from(options.days) * DAY,
    };

    writeln!(out, "\n2. feature set specs")?;
    let accounts_dir = dir.join("featuresets/accounts");
    let accounts_spec = infer_spec(
        &engine,
        &InitOptions {
            source: SourceSpec {
                kind: SourceKind::Parquet,
                path: data.join("accounts").display().to_string(),
                timestamp_column: TimestampColumn {
                    name: "timestamp".into(),
                    format: None,
                },
                source_delay: None,
            },
            index_columns: vec!["accountID".into()],
            exclude: vec![],
            source_lookback: None,
            temporal_join_lookback: Some(Offset::days(365)),
        },
        &dir,
    )
    .await?;
    let accounts_file = accounts_spec.write_to_dir(&accounts_dir.join("spec"))?;
    writeln!(
        out,
        "   accounts, from precomputed data (almanac spec init): {} features -> {}",
        accounts_spec.features.len(),
        accounts_file.display()
    )?;
    let tx_dir = dir.join("featuresets/transactions");
    write_atomic(
        &tx_dir.join("spec/FeatureSetSpec.yaml"),
        TRANSACTIONS_SPEC.as_bytes(),
    )?;
    write_atomic(
        &tx_dir.join("featureset_asset.yaml"),
        TRANSACTIONS_ASSET.as_bytes(),
    )?;
    write_atomic(
        &accounts_dir.join("featureset_asset.yaml"),
        ACCOUNTS_ASSET.as_bytes(),
    )?;
    write_atomic(
        &dir.join("entities/account.yaml"),
        ACCOUNT_ENTITY.as_bytes(),
    )?;
    writeln!(
        out,
        "   transactions: 3- and 7-day rolling aggregations -> {}",
        tx_dir.join("spec/FeatureSetSpec.yaml").display()
    )?;
    let week = TimeRange {
        start: options.start + 7 * DAY,
        end: options.start + 8 * DAY,
    };
    for (name, spec_dir) in [
        ("accounts", accounts_dir.join("spec")),
        ("transactions", tx_dir.join("spec")),
    ] {
        let loaded = LoadedSpec::load(&spec_dir)?;
        let rows = sample(&engine, &loaded, week, Some(3)).await?;
        writeln!(
            out,
            "   almanac spec sample {name} over [{}, {}):",
            &format_instant(week.start)[..10],
            &format_instant(week.end)[..10]
        )?;
        preview(&rows, out)?;
    }

    writeln!(
        out,
        "\n3. register with the feature store ({})",
        home.display()
    )?;
    let mut registry = Registry::open(&home)?;
    registry.create_entity(&EntitySpec::load(&dir.join("entities/account.yaml"))?)?;
    let (tx, _) = registry.create_feature_set(&tx_dir.join("featureset_asset.yaml"))?;
    writeln!(
        out,
        "   almanac entity create: account:1; almanac featureset create: {tx} (offline materialization on)"
    )?;
    drop(registry);

    writeln!(out, "\n4. materialize {tx}")?;
    run_backfill(&engine, &home, &tx, all, 7 * DAY, out).await?;

    writeln!(
        out,
        "\n5. training data from the registered {tx} and the unregistered accounts spec"
    )?;
    let explore = dir.join("exploration");
    let summary = retrieve(
        &engine,
        &RetrieveOptions {
            requests: parse_feature_list(
                "transactions:1:transaction_amount_7d_sum,accounts:local:accountAge",
            )?,
            local: [("accounts".to_string(), accounts_dir.join("spec"))]
                .into_iter()
                .collect(),
            observations: data.join("observations/train").display().to_string(),
            observations_format: None,
            timestamp_column: "timestamp".into(),
            timestamp_format: None,
            output: explore.clone(),
            overwrite: true,
            rows_per_file: almanac_jobs::retrieve::DEFAULT_ROWS_PER_FILE,
            home: Some(home.clone()),
        },
    )
    .await?;
    crate::commands::print_retrieval(&summary, "   ", out)?;

    writeln!(out, "\n6. register accounts and materialize it too")?;
    let mut registry = Registry::open(&home)?;
    let (accounts, _) = registry.create_feature_set(&accounts_dir.join("featureset_asset.yaml"))?;
    drop(registry);
    writeln!(out, "   almanac featureset create: {accounts}")?;
    // Its joins look back a year, so the year before the data is materialized too (empty, and
    // then Complete rather than an unknown gap).
    run_backfill(
        &engine,
        &home,
        &accounts,
        TimeRange {
            start: options.start - 371 * DAY,
            end: all.end,
        },
        28 * DAY,
        out,
    )
    .await?;

    writeln!(
        out,
        "\n7. discover features (almanac feature list --search amount)"
    )?;
    let registry = Registry::open(&home)?;
    for f in registry.features(&FeatureFilter {
        search: Some("amount".into()),
        ..FeatureFilter::default()
    })? {
        writeln!(out, "   {}:{}  {}", f.feature_set, f.name, f.data_type)?;
    }
    drop(registry);

    writeln!(
        out,
        "\n8. the feature retrieval spec (almanac retrieval-spec create)"
    )?;
    let model_dir = dir.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(CliError::Output)?;
    }
    let requests = parse_feature_list(TRAINING_FEATURES)?;
    let spec_dir = dir.join("retrieval-spec");
    let spec = registered_spec(&requests, &home)?;
    write_atomic(
        &spec_dir.join(RETRIEVAL_SPEC_FILE_NAME),
        spec.to_yaml().as_bytes(),
    )?;
    writeln!(
        out,
        "   {} features -> {}",
        requests.len(),
        spec_dir.join(RETRIEVAL_SPEC_FILE_NAME).display()
    )?;

    writeln!(
        out,
        "\n9. the training pipeline (examples/fraud/pipeline.sh runs the same steps)"
    )?;
    let training = dir.join("training-data");
    let retrieve_with_spec = |observations: &str, output: &Path| RetrieveOptions {
        requests: requests.clone(),
        local: std::collections::BTreeMap::new(),
        observations: data.join(observations).display().to_string(),
        observations_format: None,
        timestamp_column: "timestamp".into(),
        timestamp_format: None,
        output: output.to_path_buf(),
        overwrite: true,
        rows_per_file: almanac_jobs::retrieve::DEFAULT_ROWS_PER_FILE,
        home: Some(home.clone()),
    };
    let summary = retrieve(
        &engine,
        &retrieve_with_spec("observations/train", &training),
    )
    .await?;
    writeln!(
        out,
        "   (1) almanac retrieve --spec {}:",
        spec_dir.display()
    )?;
    crate::commands::print_retrieval(&summary, "      ", out)?;
    let (model, metrics) = almanac_train::train(&almanac_train::TrainOptions {
        data: training.clone(),
        label: "is_fraud".into(),
        timestamp_column: "timestamp".into(),
        holdout: 0.2,
        out: model_dir.clone(),
    })?;
    writeln!(
        out,
        "   (2) almanac train: logistic regression on {} rows, {} features, last 20% of the time held out",
        metrics.rows_train,
        model.features.len()
    )?;
    let (auc, rows) = almanac_train::evaluate(&model_dir, &training)?;
    writeln!(
        out,
        "   (3) almanac evaluate: AUC {auc:.3} on {rows} held-out rows (threshold 0.7)"
    )?;
    if auc < 0.7 {
        return Err(CliError::Usage(format!(
            "the model's AUC {auc:.3} is below 0.7; stopping"
        )));
    }
    let fraud_model = ModelRef::new("fraud_model", "1");
    let mut registry = Registry::open(&home)?;
    registry.register_model(&fraud_model, &model_dir)?;
    writeln!(
        out,
        "   (4) almanac model register: {fraud_model}, with its retrieval spec"
    )?;

    writeln!(out, "\n10. lineage")?;
    let info = registry.model(&fraud_model)?.expect("just registered");
    let sets: Vec<String> = info.feature_sets.iter().map(|f| f.to_string()).collect();
    writeln!(
        out,
        "   almanac model show {fraud_model}: uses {}",
        sets.join(", ")
    )?;
    for set in [&tx, &accounts] {
        let users: Vec<String> = registry
            .models_using(set)?
            .iter()
            .map(|m| m.to_string())
            .collect();
        writeln!(
            out,
            "   almanac featureset models {set}: {}",
            users.join(", ")
        )?;
    }
    drop(registry);

    writeln!(out, "\n11. batch inference")?;
    let inference = dir.join("inference-data");
    let summary = retrieve(
        &engine,
        &retrieve_with_spec("observations/batch_inference", &inference),
    )
    .await?;
    writeln!(out, "   almanac retrieve --model {fraud_model}:")?;
    crate::commands::print_retrieval(&summary, "      ", out)?;
    let predictions = dir.join("predictions.parquet");
    let scored = almanac_train::predict(&model_dir, &inference, &predictions)?;
    writeln!(
        out,
        "   almanac predict: {scored} rows scored -> {}",
        predictions.display()
    )?;

    writeln!(
        out,
        "\ndone in {:.1}s. Next:",
        began.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "   almanac --home {} featureset status {tx}",
        home.display()
    )?;
    writeln!(
        out,
        "   almanac --home {} model show {fraud_model}",
        home.display()
    )?;
    Ok(())
}
