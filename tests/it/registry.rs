//! The registry: immutable versions, entity checks, discovery, and retrieval of registered sets.

use std::path::{Path, PathBuf};

use almanac_jobs::backfill::{BackfillOptions, backfill};
use almanac_jobs::materialize::DataStatus;
use almanac_jobs::registry::{Created, FeatureFilter, FeatureSetRef, Registry};
use almanac_jobs::retrieve::{RetrieveOptions, parse_feature_list, retrieve};
use almanac_jobs::sample_data::{SampleDataOptions, generate};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::{EntitySpec, Stage};
use almanac_tests::fixtures::{DAY, t};

use crate::common::{engine, run_options};

const ACCOUNT: &str =
    "name: account\nversion: '1'\nindex_columns:\n  - name: accountID\n    type: string\n";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud")
}

/// Copies the example feature set folders (asset and spec) and entity under `root`, with the
/// data they point at generated in `root/data`.
fn example_store_inputs(root: &Path) -> PathBuf {
    let options = SampleDataOptions {
        accounts: 50,
        transactions: 2_000,
        // A week of history, then training, then two weeks of batch inference.
        days: 30,
        ..SampleDataOptions::default()
    };
    generate(&root.join("data"), &options, false).unwrap();
    for set in ["transactions", "accounts"] {
        let from = examples().join("featuresets").join(set);
        let to = root.join("featuresets").join(set);
        std::fs::create_dir_all(to.join("spec")).unwrap();
        std::fs::copy(
            from.join("featureset_asset.yaml"),
            to.join("featureset_asset.yaml"),
        )
        .unwrap();
        for entry in std::fs::read_dir(from.join("spec")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join("spec").join(entry.file_name())).unwrap();
        }
    }
    let entity = root.join("entities/account.yaml");
    std::fs::create_dir_all(entity.parent().unwrap()).unwrap();
    std::fs::copy(examples().join("entities/account.yaml"), &entity).unwrap();
    entity
}

#[test]
fn registered_versions_are_immutable_and_checked_against_their_entities() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let entity_file = example_store_inputs(root);
    let home = root.join("store");
    let mut registry = Registry::open(&home).unwrap();

    let tx_asset = root.join("featuresets/transactions/featureset_asset.yaml");
    let error = registry
        .create_feature_set(&tx_asset)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown entity account:1; registered entities: none"),
        "{error}"
    );
    assert!(registry.feature_sets().unwrap().is_empty());

    let account = EntitySpec::load(&entity_file).unwrap();
    assert_eq!(registry.create_entity(&account).unwrap(), Created::New);
    assert_eq!(
        registry.create_entity(&account).unwrap(),
        Created::Unchanged
    );
    let mut changed = account.clone();
    changed.description = Some("something else".into());
    let error = registry.create_entity(&changed).unwrap_err().to_string();
    assert!(
        error.contains("already registered with different content"),
        "{error}"
    );
    assert_eq!(registry.entities().unwrap(), vec![account.clone()]);

    // An entity whose index columns are not the spec's.
    let user: EntitySpec = EntitySpec::from_yaml(
        "name: user\nversion: '1'\nindex_columns:\n  - name: userID\n    type: string\n",
        Path::new("user.yaml"),
    )
    .unwrap();
    registry.create_entity(&user).unwrap();
    let mismatched = root.join("featuresets/transactions/user_asset.yaml");
    std::fs::write(
        &mismatched,
        std::fs::read_to_string(&tx_asset)
            .unwrap()
            .replace("azureml:account:1", "user:1"),
    )
    .unwrap();
    let error = registry
        .create_feature_set(&mismatched)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "the spec's index columns (accountID string) differ from its entities' (userID string)"
        ),
        "{error}"
    );
    assert!(!home.join("featuresets/transactions").exists());
    // A schedule in an unknown time zone could never trigger: refused at registration.
    let zoned = root.join("featuresets/transactions/zoned_asset.yaml");
    std::fs::write(
        &zoned,
        std::fs::read_to_string(&tx_asset)
            .unwrap()
            .replace("time_zone: UTC", "time_zone: Mars/Olympus"),
    )
    .unwrap();
    let error = registry.create_feature_set(&zoned).unwrap_err().to_string();
    assert!(
        error.contains("materialization_settings.schedule: unknown time zone 'Mars/Olympus'"),
        "{error}"
    );
    assert!(!home.join("featuresets/transactions").exists());

    let (r, c) = registry.create_feature_set(&tx_asset).unwrap();
    assert_eq!(
        (r.to_string(), c),
        ("transactions:1".to_string(), Created::New)
    );
    assert_eq!(
        registry.create_feature_set(&tx_asset).unwrap().1,
        Created::Unchanged
    );

    // Editing the user's spec changes neither the registered version nor what it computes.
    let local_spec = root.join("featuresets/transactions/spec/FeatureSetSpec.yaml");
    let edited = std::fs::read_to_string(&local_spec)
        .unwrap()
        .replace("transaction_3d_count", "renamed_count");
    std::fs::write(&local_spec, edited).unwrap();
    let error = registry
        .create_feature_set(&tx_asset)
        .unwrap_err()
        .to_string();
    assert!(error.contains("give it a new version"), "{error}");
    let stored = registry.require_feature_set(&r).unwrap();
    assert_eq!(stored.spec.spec.features[0].name, "transaction_3d_count");
    assert!(
        stored.spec.spec.source.path.starts_with('/'),
        "stored source paths are absolute"
    );
    assert!(stored.offline_enabled);

    // Discovery.
    let features = registry
        .features(&FeatureFilter {
            search: Some("AMOUNT_7D".into()),
            tags: vec![("team".into(), "fraud".into())],
            ..FeatureFilter::default()
        })
        .unwrap();
    let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["transaction_amount_7d_sum", "transaction_amount_7d_avg"]
    );
    assert!(
        registry
            .features(&FeatureFilter {
                tags: vec![("team".into(), "other".into())],
                ..FeatureFilter::default()
            })
            .unwrap()
            .is_empty()
    );
    let error = registry
        .features(&FeatureFilter {
            feature_set: Some(FeatureSetRef::new("nope", "1")),
            ..FeatureFilter::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown feature set nope:1") && error.contains("transactions:1"),
        "{error}"
    );

    registry.set_stage(&r, Stage::Archived).unwrap();
    assert_eq!(registry.feature_sets().unwrap()[0].stage, Stage::Archived);
    registry.set_stage(&r, Stage::Development).unwrap();
    drop(registry);

    // Reopening applies no migration twice and keeps everything.
    let registry = Registry::open(&home).unwrap();
    assert_eq!(registry.feature_sets().unwrap().len(), 1);
    assert_eq!(registry.entities().unwrap().len(), 2);
}

#[test]
fn a_registry_written_by_a_newer_almanac_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut registry = Registry::open(tmp.path()).unwrap();
    registry
        .create_entity(&EntitySpec::from_yaml(ACCOUNT, Path::new("a.yaml")).unwrap())
        .unwrap();
    drop(registry);
    let db = rusqlite_file(tmp.path());
    db.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 'later')",
        [],
    )
    .unwrap();
    drop(db);
    let error = Registry::open(tmp.path()).unwrap_err().to_string();
    assert!(
        error.contains("schema version 999, written by a newer Almanac"),
        "{error}"
    );
}

fn rusqlite_file(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join("registry.db")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_sets_retrieve_exactly_as_their_local_specs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let entity_file = example_store_inputs(root);
    let home = root.join("store");
    let mut registry = Registry::open(&home).unwrap();
    registry
        .create_entity(&EntitySpec::load(&entity_file).unwrap())
        .unwrap();
    for set in ["transactions", "accounts"] {
        registry
            .create_feature_set(&root.join(format!("featuresets/{set}/featureset_asset.yaml")))
            .unwrap();
    }
    drop(registry);
    let engine = engine(2).await;
    let run = |features: &str, out: &str| RetrieveOptions {
        requests: parse_feature_list(features).unwrap(),
        local: [
            (
                "transactions".to_string(),
                root.join("featuresets/transactions/spec"),
            ),
            (
                "accounts".to_string(),
                root.join("featuresets/accounts/spec"),
            ),
        ]
        .into_iter()
        .collect(),
        observations: root.join("data/observations/train").display().to_string(),
        observations_format: None,
        timestamp_column: "timestamp".into(),
        timestamp_format: None,
        output: root.join(out),
        overwrite: false,
        rows_per_file: 500,
        home: Some(home.clone()),
    };
    // transactions:1 is read from its offline store: before any backfill, nothing is there,
    // and the retrieval says so instead of passing the nulls off as data.
    let early = retrieve(
        &engine,
        &run(
            "transactions:1:transaction_7d_count,accounts:1:accountAge",
            "early",
        ),
    )
    .await
    .unwrap();
    assert_eq!(early.matches[0], ("transactions:1".to_string(), 0));
    assert_eq!(early.incomplete.len(), 1);
    assert_eq!(early.incomplete[0].0, "transactions:1");
    assert!(
        early.incomplete[0]
            .1
            .iter()
            .all(|g| g.status == DataStatus::None)
    );

    let options = BackfillOptions {
        feature_set: FeatureSetRef::new("transactions", "1"),
        window: TimeRange {
            start: t("2023-01-01"),
            end: t("2023-01-31"),
        },
        statuses: vec![DataStatus::None],
        partition: DAY,
    };
    let report = backfill(&engine, &home, &options, &run_options(), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.failed(), 0);
    let registered = retrieve(
        &engine,
        &run(
            "transactions:1:transaction_7d_count,accounts:1:accountAge",
            "registered",
        ),
    )
    .await
    .unwrap();
    assert!(
        registered.incomplete.is_empty(),
        "{:?}",
        registered.incomplete
    );
    retrieve(
        &engine,
        &run(
            "transactions:local:transaction_7d_count,accounts:local:accountAge",
            "local",
        ),
    )
    .await
    .unwrap();
    assert!(registered.rows_out > 0);
    let bytes = |dir: &str| {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir).join("data"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    assert!(bytes("registered") == bytes("local"));
    let spec =
        std::fs::read_to_string(root.join("registered/feature_retrieval_spec.yaml")).unwrap();
    assert!(
        spec.contains(&format!("uri: file://{}", home.display()))
            && spec.contains("feature_set: transactions:1"),
        "{spec}"
    );
    // An unknown registered set names what the store has.
    let error = retrieve(&engine, &run("transactions:2:transaction_7d_count", "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown feature set transactions:2")
            && error.contains("registered feature sets: accounts:1, transactions:1"),
        "{error}"
    );
}
