//! The `almanac` binary, run as a user would run it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use almanac_tests::fixtures::{DAY, read_folder, read_parquet, result_map, t};
use almanac_tests::oracle::{Agg, SourceRow, assert_same, window_features};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};

use crate::common::{Output, failed, ok, run_cli};

/// Runs `almanac ARGS` in `cwd` through the CLI library: argument parsing, the command and its
/// output, everything the binary does but logging setup. The working folder is process-wide,
/// so CLI runs that need one take turns.
fn almanac(args: &[&str], cwd: &Path) -> Output {
    static CWD: Mutex<()> = Mutex::new(());
    let _turn = CWD.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_current_dir(cwd).unwrap();
    run_cli(args)
}

/// Writes sample data into `root/data`.
fn sample_data(root: &Path, accounts: usize, transactions: usize, days: u32) {
    let (accounts, transactions, days) = (
        accounts.to_string(),
        transactions.to_string(),
        days.to_string(),
    );
    ok(&almanac(
        &[
            "sample-data",
            "--out",
            "data",
            "--accounts",
            &accounts,
            "--transactions",
            &transactions,
            "--days",
            &days,
        ],
        root,
    ));
}

fn example_spec(name: &str, to: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/fraud/featuresets")
        .join(name)
        .join("spec");
    let dir = to.join("featuresets").join(name).join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn example_transactions_spec_over_a_month_matches_an_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 150, 6000, 45);
    let spec = example_spec("transactions", root);
    let out = root.join("month.parquet");
    let stdout = ok(&almanac(
        &[
            "spec",
            "sample",
            spec.to_str().unwrap(),
            "--start",
            "2023-01-08",
            "--end",
            "2023-02-08",
            "--output",
            out.to_str().unwrap(),
        ],
        root,
    ));
    assert!(stdout.contains("wrote"), "{stdout}");

    // The oracle reads the generated parquet itself.
    let mut rows = Vec::new();
    for b in read_folder(&root.join("data/transactions")) {
        let ids = cast(b.column_by_name("accountID").unwrap(), &DataType::Utf8).unwrap();
        let ts = cast(b.column_by_name("timestamp").unwrap(), &DataType::Int64).unwrap();
        let amount = b
            .column_by_name("transactionAmount")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for i in 0..b.num_rows() {
            rows.push(SourceRow {
                keys: vec![Some(ids.as_string::<i32>().value(i).to_string())],
                ts: ts.as_primitive::<Int64Type>().value(i),
                value: (!amount.is_null(i)).then(|| amount.value(i)),
            });
        }
    }
    let aggs = [
        (Agg::Count, 3 * DAY),
        (Agg::Sum, 3 * DAY),
        (Agg::Avg, 3 * DAY),
        (Agg::Count, 7 * DAY),
        (Agg::Sum, 7 * DAY),
        (Agg::Avg, 7 * DAY),
    ];
    let expected = window_features(&rows, &aggs, t("2023-01-08"), t("2023-02-08"), 7 * DAY);
    assert!(
        expected.len() > 3000,
        "a month of the sample has thousands of rows"
    );
    let batches = read_parquet(&out);
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "accountID",
            "timestamp",
            "transaction_3d_count",
            "transaction_amount_3d_sum",
            "transaction_amount_3d_avg",
            "transaction_7d_count",
            "transaction_amount_7d_sum",
            "transaction_amount_7d_avg"
        ]
    );
    assert_eq!(schema.field(2).data_type(), &DataType::Int64);
    assert_same(
        &result_map(&batches, &["accountID"], "timestamp"),
        &expected,
    );
}

#[test]
fn spec_init_validate_and_sample_on_precomputed_accounts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 20, 200, 21);
    let stdout = ok(&almanac(
        &[
            "spec",
            "init",
            "--source",
            "data/accounts",
            "--index-column",
            "accountID",
            "--timestamp-column",
            "timestamp",
            "--temporal-join-lookback",
            "365d",
            "--out",
            "spec",
        ],
        root,
    ));
    assert!(stdout.contains("with 4 feature(s)"), "{stdout}");
    let written = std::fs::read_to_string(root.join("spec/FeatureSetSpec.yaml")).unwrap();
    for expected in [
        "name: accountAge",
        "type: double",
        "name: isUserRegistered",
        "type: boolean",
        "days: 365",
    ] {
        assert!(
            written.contains(expected),
            "{expected} missing from:\n{written}"
        );
    }
    let again = failed(&almanac(
        &[
            "spec",
            "init",
            "--source",
            "data/accounts",
            "--index-column",
            "accountID",
            "--timestamp-column",
            "timestamp",
            "--out",
            "spec",
        ],
        root,
    ));
    assert!(again.contains("already exists; pass --force"), "{again}");

    let validated = ok(&almanac(&["spec", "validate", "spec"], root));
    assert!(
        validated.starts_with("ok: ") && validated.contains("precomputed"),
        "{validated}"
    );

    let table = ok(&almanac(
        &[
            "spec",
            "sample",
            "spec",
            "--start",
            "2023-01-01",
            "--end",
            "2023-01-02",
            "--limit",
            "5",
        ],
        root,
    ));
    // Snapshots are weekly at midnight: the first day holds one snapshot per account.
    assert!(
        table.contains("| accountID | timestamp            | accountCountry |"),
        "{table}"
    );
    assert!(
        table.contains("A1000000  | 2023-01-01T00:00:00Z"),
        "{table}"
    );
    assert!(
        table.contains("5 row(s) (limited; use --limit N for more)"),
        "{table}"
    );
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 20, 200, 21);

    // A spec with a bad field: the error names the file and field; no output file appears.
    let spec = example_spec("transactions", root);
    let file = spec.join("FeatureSetSpec.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("aggregation: avg", "aggregation: mean");
    std::fs::write(&file, text).unwrap();
    let out = root.join("out.parquet");
    let err = failed(&almanac(
        &[
            "spec",
            "sample",
            spec.to_str().unwrap(),
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-09",
            "--output",
            "out.parquet",
        ],
        root,
    ));
    assert!(
        err.contains("FeatureSetSpec.yaml") && err.contains("aggregation: expected one of"),
        "{err}"
    );
    assert!(!out.exists());

    let err = failed(&almanac(
        &[
            "spec",
            "sample",
            "data",
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-01",
        ],
        root,
    ));
    assert!(err.contains("must be before --end"), "{err}");
    let err = failed(&almanac(
        &[
            "spec",
            "sample",
            "nowhere",
            "--start",
            "2023-01-08",
            "--end",
            "yesterday",
        ],
        root,
    ));
    assert!(err.contains("--end: 'yesterday' is not a time"), "{err}");

    let err = failed(&almanac(
        &[
            "spec",
            "init",
            "--source",
            "data/accounts",
            "--index-column",
            "userID",
            "--timestamp-column",
            "timestamp",
            "--out",
            "s2",
        ],
        root,
    ));
    assert!(err.contains("no column 'userID'"), "{err}");
    assert!(!root.join("s2").exists());

    let err = failed(&almanac(
        &["sample-data", "--out", "d2", "--days", "3"],
        root,
    ));
    assert!(err.contains("at least"), "{err}");
    assert!(!root.join("d2/transactions").exists());
    let err = failed(&almanac(&["sample-data", "--out", "data"], root));
    assert!(err.contains("--force"), "{err}");

    let err = failed(&almanac(
        &["--memory-limit", "lots", "spec", "validate", "data"],
        root,
    ));
    assert!(err.contains("--memory-limit 'lots'"), "{err}");
}

#[test]
fn sample_data_is_deterministic_and_labels_are_learnable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let args = [
        "--accounts",
        "300",
        "--transactions",
        "20000",
        "--days",
        "30",
    ];
    ok(&almanac(
        &[&["sample-data", "--out", "a"][..], &args].concat(),
        root,
    ));
    ok(&almanac(
        &[&["sample-data", "--out", "b"][..], &args].concat(),
        root,
    ));
    for f in [
        "transactions/part-00000.parquet",
        "accounts/part-00000.parquet",
        "observations/train/part-00000.parquet",
    ] {
        assert_eq!(
            std::fs::read(root.join("a").join(f)).unwrap(),
            std::fs::read(root.join("b").join(f)).unwrap(),
            "{f}"
        );
    }
    // Fraud concentrates where the 7-day count is high: compare the label rate of the busiest
    // quarter of transactions (by 7-day count, computed by the engine) with the rest.
    let spec = example_spec("transactions", root);
    std::fs::rename(root.join("a"), root.join("data")).unwrap();
    ok(&almanac(
        &[
            "spec",
            "sample",
            spec.to_str().unwrap(),
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-31",
            "--output",
            "f.parquet",
        ],
        root,
    ));
    let features = result_map(
        &read_parquet(&root.join("f.parquet")),
        &["accountID"],
        "timestamp",
    );
    let mut labels = std::collections::BTreeMap::new();
    for b in read_folder(&root.join("data/transactions")) {
        let ids = b
            .column_by_name("accountID")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let ts = cast(b.column_by_name("timestamp").unwrap(), &DataType::Int64).unwrap();
        let fraud = b
            .column_by_name("is_fraud")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            let key = (
                vec![Some(ids.value(i).to_string())],
                ts.as_primitive::<Int64Type>().value(i),
            );
            *labels.entry(key).or_insert(0) += fraud.value(i);
        }
    }
    let mut scored: Vec<(f64, i64)> = features
        .iter()
        .map(|(k, v)| {
            (
                v[3].unwrap_or(0.0),
                i64::from(labels.get(k).copied().unwrap_or(0) > 0),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let quarter = scored.len() / 4;
    let rate = |s: &[(f64, i64)]| s.iter().map(|x| x.1).sum::<i64>() as f64 / s.len() as f64;
    let (busy, rest) = (rate(&scored[..quarter]), rate(&scored[quarter..]));
    assert!(
        busy > 3.0 * rest,
        "fraud rate among busy accounts {busy:.4} vs others {rest:.4}"
    );
}

#[test]
fn quickstart_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        ok(&almanac(
            &["quickstart", "--dir", "qs", "--transactions", "3000"],
            tmp.path(),
        ))
    };
    let stdout = run();
    for expected in [
        "1. sample data",
        "3000 transactions",
        "accounts, from precomputed data",
        "transaction_7d_count",
        "almanac backfill transactions:1",
        "transactions:1: ",
        "accounts:local: ",
        "almanac model register: fraud_model:1",
        "almanac featureset models accounts:1: fraud_model:1",
        "rows scored",
        "done in",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    assert!(!stdout.contains("warning"), "{stdout}");
    let auc: f32 = stdout
        .split("AUC ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the quickstart reports the model's AUC");
    assert!(auc > 0.7, "AUC {auc}");
    for file in [
        "featuresets/accounts/spec/FeatureSetSpec.yaml",
        "training-data/feature_retrieval_spec.yaml",
        "model/model.json",
        "predictions.parquet",
        ".almanac/registry.db",
    ] {
        assert!(tmp.path().join("qs").join(file).exists(), "{file}");
    }
    // A second run starts its store over and succeeds again.
    assert!(run().contains("starting over"));
}

#[test]
fn retrieve_writes_training_data_and_its_spec_retrieves_inference_data() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 200, 4000, 60);
    let tx = example_spec("transactions", root);
    let accounts = example_spec("accounts", root);
    let local_tx = format!("transactions={}", tx.display());
    let local_accounts = format!("accounts={}", accounts.display());
    let stdout = ok(&almanac(
        &[
            "--parallelism",
            "3",
            "retrieve",
            "--local",
            &local_tx,
            "--local",
            &local_accounts,
            "--features",
            "accounts:local:accountAge,transactions:local:transaction_amount_7d_sum",
            "--features",
            "transactions:local:transaction_7d_count=tx_count_7d",
            "--observations",
            "data/observations/train",
            "--timestamp-column",
            "timestamp",
            "--output",
            "train",
            "--rows-per-file",
            "1000",
        ],
        root,
    ));
    let train = read_folder(&root.join("train/data"));
    let rows: usize = train.iter().map(|b| b.num_rows()).sum();
    for expected in [
        format!("retrieved {rows} observation rows"),
        format!("rows in {rows}, rows out {rows}"),
        "accounts:local: ".to_string(),
        "transactions:local: ".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    let schema = train[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "transactionID",
            "accountID",
            "transactionAmount",
            "timestamp",
            "is_fraud",
            "accountAge",
            "transaction_amount_7d_sum",
            "tx_count_7d"
        ]
    );
    assert!(rows > 1000 && std::fs::read_dir(root.join("train/data")).unwrap().count() > 1);

    // The written spec carries the local sets' folders: batch inference needs nothing else.
    let stdout = ok(&almanac(
        &[
            "retrieve",
            "--spec",
            "train",
            "--observations",
            "data/observations/batch_inference/*.parquet",
            "--timestamp-column",
            "timestamp",
            "--output",
            "inference",
        ],
        root,
    ));
    assert!(stdout.contains("retrieved"), "{stdout}");
    let inference = read_folder(&root.join("inference/data"));
    let schema = inference[0].schema();
    assert!(schema.field_with_name("tx_count_7d").is_ok());
    assert!(schema.field_with_name("is_fraud").is_err());

    // Bad input through the CLI: a clear message and no output.
    let err = failed(&almanac(
        &[
            "retrieve",
            "--features",
            "transactions:local",
            "--observations",
            "data/observations/train",
            "--timestamp-column",
            "timestamp",
            "--output",
            "never",
        ],
        root,
    ));
    assert!(err.contains("is not a feature reference"), "{err}");
    assert!(!root.join("never").exists());
}

#[test]
fn registry_commands_register_discover_and_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud");
    let entity = examples.join("entities/account.yaml");
    let entity = entity.to_str().unwrap();
    let asset = examples.join("featuresets/transactions/featureset_asset.yaml");
    let asset = asset.to_str().unwrap();
    let home = ["--home", "store"];
    let run = |args: &[&str]| almanac(&[&home[..], args].concat(), root);

    // Without its entity, a feature set is refused and nothing is registered.
    let err = failed(&run(&["featureset", "create", "--file", asset]));
    assert!(err.contains("unknown entity account:1"), "{err}");
    assert!(ok(&run(&["featureset", "list"])).contains("no feature sets registered"));

    assert!(
        ok(&run(&["entity", "create", "--file", entity])).contains("registered entity account:1")
    );
    assert!(ok(&run(&["entity", "create", "--file", entity])).contains("nothing changed"));
    assert!(
        ok(&run(&["featureset", "create", "--file", asset]))
            .contains("registered feature set transactions:1")
    );
    let list = ok(&run(&["featureset", "list"]));
    assert!(
        list.contains("transactions:1  Development  6 features  offline materialization on"),
        "{list}"
    );
    let show = ok(&run(&["featureset", "show", "transactions:1"]));
    assert!(
        show.contains("entities: account:1") && show.contains("transaction_amount_7d_avg double"),
        "{show}"
    );
    let features = ok(&run(&[
        "feature",
        "list",
        "--search",
        "count",
        "--tag",
        "team=fraud",
    ]));
    assert!(
        features.contains("transactions:1:transaction_7d_count")
            && features.contains("2 feature(s)"),
        "{features}"
    );
    ok(&run(&["featureset", "archive", "transactions:1"]));
    assert!(ok(&run(&["featureset", "list"])).contains("transactions:1  Archived"));
    ok(&run(&["featureset", "restore", "transactions:1"]));
    assert!(ok(&run(&["entity", "show", "account:1"])).contains("accountID"));
    let err = failed(&run(&[
        "featureset",
        "sample",
        "transactions:7",
        "--start",
        "2023-01-10",
        "--end",
        "2023-01-11",
    ]));
    assert!(err.contains("unknown feature set transactions:7"), "{err}");
    let err = failed(&run(&["feature", "list", "--tag", "team"]));
    assert!(err.contains("tag 'team' is not key=value"), "{err}");
}

#[test]
fn backfill_status_and_jobs_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 30, 1500, 20);
    let tx = example_spec("transactions", root);
    let set = tx.parent().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/fraud/featuresets/transactions/featureset_asset.yaml"),
        set.join("featureset_asset.yaml"),
    )
    .unwrap();
    let entity =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud/entities/account.yaml");
    // The offline tables live apart from the home; the store records where.
    ok(&almanac(
        &[
            "--offline-root",
            "lake",
            "entity",
            "create",
            "--file",
            entity.to_str().unwrap(),
        ],
        root,
    ));
    let asset = set.join("featureset_asset.yaml");
    ok(&almanac(
        &["featureset", "create", "--file", asset.to_str().unwrap()],
        root,
    ));

    let out = ok(&almanac(
        &[
            "backfill",
            "transactions:1",
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-11",
        ],
        root,
    ));
    assert!(out.contains("succeeded: 3 task(s), 0 failed"), "{out}");
    assert!(root.join("lake/transactions/1/_delta_log").is_dir());
    assert!(!root.join(".almanac/offline").exists());
    let err = failed(&almanac(
        &["--offline-root", "elsewhere", "job", "list"],
        root,
    ));
    assert!(err.contains("keeps its offline tables at"), "{err}");
    let status = ok(&almanac(&["featureset", "status", "transactions:1"], root));
    assert!(
        status.contains("[2023-01-08T00:00:00Z, 2023-01-11T00:00:00Z) Complete"),
        "{status}"
    );
    let job = status
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("backfill-")))
        .unwrap()
        .to_string();
    let show = ok(&almanac(&["job", "show", &job], root));
    assert!(
        show.contains("task 2") && show.contains("succeeded  attempts 1"),
        "{show}"
    );
    assert!(ok(&almanac(&["job", "list"], root)).contains(&job));
    // Watching an ended job prints it at once; cancelling one changes nothing.
    let watched = ok(&almanac(&["job", "watch", &job], root));
    assert!(
        watched.contains(&job) && watched.contains("succeeded"),
        "{watched}"
    );
    let cancelled = ok(&almanac(&["job", "cancel", &job], root));
    assert!(cancelled.contains("succeeded"), "{cancelled}");
    let err = failed(&almanac(&["cluster", "status"], root));
    assert!(err.contains("there is no cluster"), "{err}");
    let err = failed(&almanac(
        &[
            "--scheduler",
            "127.0.0.1:1",
            "featureset",
            "sample",
            "transactions:1",
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-09",
        ],
        root,
    ));
    assert!(err.contains("not part of the job API yet"), "{err}");
    let again = ok(&almanac(
        &[
            "backfill",
            "transactions:1",
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-11",
        ],
        root,
    ));
    assert!(again.contains("nothing to backfill"), "{again}");
    let err = failed(&almanac(
        &[
            "backfill",
            "transactions:1",
            "--start",
            "2023-01-11",
            "--end",
            "2023-01-08",
        ],
        root,
    ));
    assert!(err.contains("must be before --end"), "{err}");
    let err = failed(&almanac(
        &[
            "backfill",
            "transactions:1",
            "--start",
            "2023-01-08",
            "--end",
            "2023-01-11",
            "--data-status",
            "Done",
        ],
        root,
    ));
    assert!(err.contains("'Done' is not a data status"), "{err}");
    let err = failed(&almanac(&["backfill", "--job", "backfill-nope"], root));
    assert!(err.contains("unknown job backfill-nope"), "{err}");
}

/// Copies an example feature set folder (asset and spec) under `root/featuresets/`.
pub(crate) fn example_set(name: &str, root: &Path) -> PathBuf {
    let spec = example_spec(name, root);
    let set = spec.parent().unwrap().to_path_buf();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/fraud/featuresets")
            .join(name)
            .join("featureset_asset.yaml"),
        set.join("featureset_asset.yaml"),
    )
    .unwrap();
    set.join("featureset_asset.yaml")
}

#[test]
fn retrieval_specs_models_lineage_and_batch_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 30, 1500, 30);
    let entity =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud/entities/account.yaml");
    ok(&almanac(
        &["entity", "create", "--file", entity.to_str().unwrap()],
        root,
    ));
    for set in ["transactions", "accounts"] {
        let asset = example_set(set, root);
        ok(&almanac(
            &["featureset", "create", "--file", asset.to_str().unwrap()],
            root,
        ));
    }
    ok(&almanac(
        &[
            "backfill",
            "transactions:1",
            "--start",
            "2023-01-01",
            "--end",
            "2023-01-31",
        ],
        root,
    ));

    // Retrieval specs hold registered features only.
    let out = ok(&almanac(
        &[
            "retrieval-spec",
            "create",
            "--features",
            "transactions:1:transaction_7d_count,accounts:1:accountAge=age",
            "--out",
            "model_a",
        ],
        root,
    ));
    assert!(out.contains("2 feature(s)"), "{out}");
    let spec = std::fs::read_to_string(root.join("model_a/feature_retrieval_spec.yaml")).unwrap();
    assert!(
        spec.contains("feature_set: transactions:1") && spec.contains("output_name: age"),
        "{spec}"
    );
    for (features, expected) in [
        ("transactions:local:transaction_7d_count", "a local spec"),
        ("nope:1:x", "unknown feature set nope:1"),
        (
            "transactions:2:transaction_7d_count",
            "unknown feature set transactions:2",
        ),
        ("transactions:1:nope", "has no feature 'nope'"),
    ] {
        let err = failed(&almanac(
            &[
                "retrieval-spec",
                "create",
                "--features",
                features,
                "--out",
                "bad",
            ],
            root,
        ));
        assert!(err.contains(expected), "{features}: {err}");
        assert!(!root.join("bad").exists());
    }

    // Two models share accounts:1.
    std::fs::write(root.join("model_a/weights.bin"), b"a").unwrap();
    ok(&almanac(
        &[
            "model",
            "register",
            "--name",
            "fraud",
            "--version",
            "1",
            "--path",
            "model_a",
        ],
        root,
    ));
    ok(&almanac(
        &[
            "retrieval-spec",
            "create",
            "--features",
            "accounts:1:accountAge",
            "--out",
            "model_b",
        ],
        root,
    ));
    ok(&almanac(
        &[
            "model",
            "register",
            "--name",
            "churn",
            "--version",
            "1",
            "--path",
            "model_b",
        ],
        root,
    ));
    let users = ok(&almanac(&["featureset", "models", "accounts:1"], root));
    assert_eq!(users.lines().collect::<Vec<_>>(), ["churn:1", "fraud:1"]);
    let users = ok(&almanac(&["featureset", "models", "transactions:1"], root));
    assert_eq!(users.lines().collect::<Vec<_>>(), ["fraud:1"]);
    let show = ok(&almanac(&["model", "show", "fraud:1"], root));
    assert!(
        show.contains("  accounts:1") && show.contains("  transactions:1"),
        "{show}"
    );

    // Bad registrations change nothing.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let err = failed(&almanac(
        &[
            "model",
            "register",
            "--name",
            "x",
            "--version",
            "1",
            "--path",
            "empty",
        ],
        root,
    ));
    assert!(err.contains("has no feature_retrieval_spec.yaml"), "{err}");
    std::fs::write(root.join("model_a/weights.bin"), b"changed").unwrap();
    let err = failed(&almanac(
        &[
            "model",
            "register",
            "--name",
            "fraud",
            "--version",
            "1",
            "--path",
            "model_a",
        ],
        root,
    ));
    assert!(
        err.contains("already registered with different files"),
        "{err}"
    );
    let list = ok(&almanac(&["model", "list"], root));
    assert_eq!(list.lines().count(), 2, "{list}");

    // Batch inference with the model's packaged spec.
    let out = ok(&almanac(
        &[
            "retrieve",
            "--model",
            "fraud:1",
            "--observations",
            "data/observations/batch_inference",
            "--timestamp-column",
            "timestamp",
            "--output",
            "scored",
        ],
        root,
    ));
    assert!(
        out.contains("accounts:1: ") && !out.contains("warning"),
        "{out}"
    );
    let scored = read_folder(&root.join("scored/data"));
    assert!(scored[0].schema().field_with_name("age").is_ok());
    let err = failed(&almanac(
        &[
            "retrieve",
            "--model",
            "nope:1",
            "--observations",
            "data/observations/batch_inference",
            "--timestamp-column",
            "timestamp",
            "--output",
            "x",
        ],
        root,
    ));
    assert!(err.contains("unknown model nope:1"), "{err}");
}

#[test]
fn training_pipeline_steps_learn_the_signal_and_score_new_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    sample_data(root, 300, 12_000, 45);
    let tx = example_spec("transactions", root);
    let accounts = example_spec("accounts", root);
    let local = [
        format!("transactions={}", tx.display()),
        format!("accounts={}", accounts.display()),
    ];
    let features = "transactions:local:transaction_amount_7d_sum,transactions:local:transaction_3d_count,\
                    transactions:local:transaction_amount_3d_avg,accounts:local:isUserRegistered,\
                    accounts:local:numPaymentRejects1dPerUser,accounts:local:accountAge";
    let retrieve = |observations: &str, output: &str| {
        ok(&almanac(
            &[
                "retrieve",
                "--local",
                &local[0],
                "--local",
                &local[1],
                "--features",
                features,
                "--observations",
                observations,
                "--timestamp-column",
                "timestamp",
                "--output",
                output,
            ],
            root,
        ))
    };
    retrieve("data/observations/train", "training");
    let out = ok(&almanac(
        &[
            "train",
            "--data",
            "training",
            "--label",
            "is_fraud",
            "--timestamp-column",
            "timestamp",
            "--out",
            "model",
        ],
        root,
    ));
    assert!(out.contains("with 6 features"), "{out}");
    for file in ["model.json", "metrics.json", "feature_retrieval_spec.yaml"] {
        assert!(root.join("model").join(file).is_file(), "{file}");
    }
    let out = ok(&almanac(
        &[
            "evaluate",
            "--model",
            "model",
            "--data",
            "training",
            "--min-auc",
            "0.7",
        ],
        root,
    ));
    let auc: f32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        auc > 0.7,
        "the features carry the sample data's signal: AUC {auc}"
    );
    let err = failed(&almanac(
        &[
            "evaluate",
            "--model",
            "model",
            "--data",
            "training",
            "--min-auc",
            "0.9999",
        ],
        root,
    ));
    assert!(err.contains("is below the threshold"), "{err}");

    retrieve("data/observations/batch_inference", "inference");
    ok(&almanac(
        &[
            "predict",
            "--model",
            "model",
            "--data",
            "inference",
            "--out",
            "scores.parquet",
        ],
        root,
    ));
    let scores = read_parquet(&root.join("scores.parquet"));
    let rows: usize = scores.iter().map(|b| b.num_rows()).sum();
    let inference: usize = read_folder(&root.join("inference/data"))
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, inference);
    for b in &scores {
        let s = b
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert!(s.values().iter().all(|p| (0.0..=1.0).contains(p)));
    }

    let err = failed(&almanac(
        &[
            "train",
            "--data",
            "training",
            "--label",
            "nope",
            "--timestamp-column",
            "timestamp",
            "--out",
            "m2",
        ],
        root,
    ));
    assert!(err.contains("no label column 'nope'"), "{err}");
    assert!(!root.join("m2").exists());
    let err = failed(&almanac(
        &["evaluate", "--model", "training", "--data", "training"],
        root,
    ));
    assert!(err.contains("model.json"), "{err}");
}

/// `almanac bench all` at a small scale: every phase runs and reports; both feature plans
/// give the same rows; a skewed run puts the stated share of rows on one account; Zipf keys
/// follow their law; multi-day backfill tasks write the same rows.
#[test]
fn bench_all_measures_every_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench");
    let args = |share: &str, extra: &[&str]| {
        let mut args = vec![
            "bench".to_string(),
            "all".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--transactions".into(),
            "3000".into(),
            "--accounts".into(),
            "40".into(),
            "--days".into(),
            "15".into(),
            "--observations".into(),
            "500".into(),
            "--hot-key-share".into(),
            share.into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |share: &str, extra: &[&str]| -> serde_json::Value {
        let args = args(share, extra);
        let out = ok(&run_cli(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let report = run("0", &[]);
    let features = report["features"].as_array().unwrap();
    assert_eq!(features.len(), 2, "{report}");
    assert_eq!(features[0]["plan"], "window_operator");
    assert_eq!(features[1]["plan"], "window_functions");
    assert_eq!(features[0]["output_rows"], features[1]["output_rows"]);
    assert!(
        features[0]["output_rows"].as_u64().unwrap() > 2_000,
        "{report}"
    );
    assert!(report["window_operator_speedup"].as_f64().unwrap() > 0.0);
    let backfill = &report["backfill"];
    assert_eq!(backfill["tasks"], 15);
    assert_eq!(backfill["rows_written"], features[0]["output_rows"]);
    assert!(
        backfill["files_written"].as_u64().unwrap() >= 15,
        "{report}"
    );
    assert!(backfill["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["retrieve"]["observations"], 500);
    assert!(
        report["retrieve"]["observation_rows_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(report["machine"]["build"], "debug");

    // A hot key: one account's transactions are the stated share (within sampling noise).
    let report = run("0.2", &[]);
    assert_eq!(report["scale"]["hot_key_share"], 0.2);
    let share_of = |account: &str| {
        let transactions = almanac_tests::fixtures::read_folder(&dir.join("data/transactions"));
        let mut hits = 0;
        let mut total = 0;
        for b in &transactions {
            let ids = b.column_by_name("accountID").unwrap();
            let ids = cast(ids, &DataType::Utf8).unwrap();
            let ids = ids.as_string::<i32>();
            total += ids.len();
            hits += ids.iter().filter(|a| *a == Some(account)).count();
        }
        assert_eq!(total, 3000);
        hits as f64 / total as f64
    };
    let share = share_of("A1000000");
    assert!((0.17..0.23).contains(&share), "{share}");

    // Zipf keys with s = 1.2 over 40 accounts; the operator alone; 7-day backfill tasks.
    let report = run(
        "0",
        &["--zipf", "1.2", "--plans", "operator", "--task-days", "7"],
    );
    assert_eq!(report["scale"]["zipf"], 1.2);
    let features = report["features"].as_array().unwrap();
    assert_eq!(features.len(), 1, "{report}");
    assert_eq!(features[0]["plan"], "window_operator");
    assert_eq!(report["backfill"]["tasks"], 3, "15 days as 7 + 7 + 1");
    assert_eq!(report["backfill"]["task_days"], 7);
    assert_eq!(
        report["backfill"]["rows_written"],
        features[0]["output_rows"]
    );
    let harmonic: f64 = (1..=40).map(|k| (k as f64).powf(-1.2)).sum();
    for (rank, account) in [(1, "A1000000"), (2, "A1000001"), (10, "A1000009")] {
        let expected = (rank as f64).powf(-1.2) / harmonic;
        let share = share_of(account);
        assert!(
            (share - expected).abs() < 0.03,
            "{account}: share {share}, Zipf expects {expected}"
        );
    }

    let error = failed(&run_cli(&["bench", "features", "--hot-key-share", "1.5"]));
    assert!(error.contains("--hot-key-share 1.5"), "{error}");
    let error = failed(&run_cli(&["bench", "features", "--zipf", "0"]));
    assert!(error.contains("--zipf 0"), "{error}");
    let error = failed(&run_cli(&["bench", "backfill", "--task-days", "0"]));
    assert!(error.contains("--task-days 0"), "{error}");
}
