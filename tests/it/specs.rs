//! Reading, validating and writing the spec files users write (DESIGN.md §3).

use std::path::Path;

use almanac_jobs::spec::{
    Aggregation, EntitySpec, FeatureRetrievalSpec, FeatureSetAsset, FeatureSetSpec, FeatureType,
    LoadedSpec, Offset, SpecErrors, Transformation,
};

const FILE: &str = "spec/FeatureSetSpec.yaml";

fn errors(yaml: &str) -> SpecErrors {
    FeatureSetSpec::from_yaml(yaml, Path::new(FILE)).expect_err("spec should be rejected")
}

/// Asserts that one reported problem is at `path` and mentions `words`.
fn assert_problem(e: &SpecErrors, path: &str, words: &str) {
    assert!(
        e.errors
            .iter()
            .any(|f| f.path == path && f.message.contains(words)),
        "expected a problem at {path} mentioning '{words}', got:\n{e}"
    );
}

fn example(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud/featuresets");
    let dir = root.join(name).join("spec");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn example_specs_load_with_their_fields() {
    let tx = FeatureSetSpec::from_yaml(&example("transactions"), Path::new(FILE)).unwrap();
    assert_eq!(tx.index_names(), vec!["accountID"]);
    assert_eq!(tx.source_delay(), Offset::minutes(20));
    assert_eq!(tx.source_lookback(), Offset::days(7));
    assert_eq!(tx.temporal_join_lookback, Some(Offset::days(1)));
    let exprs = tx.window_aggregations().unwrap();
    assert_eq!(exprs.len(), 6);
    assert_eq!(exprs[1].aggregation, Aggregation::Sum);
    assert_eq!(exprs[1].source_column.as_deref(), Some("transactionAmount"));
    let accounts = FeatureSetSpec::from_yaml(&example("accounts"), Path::new(FILE)).unwrap();
    assert!(accounts.feature_transformation.is_none());
    assert_eq!(accounts.features[1].data_type, FeatureType::Boolean);
}

#[test]
fn both_file_name_spellings_load_from_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["FeatureSetSpec.yaml", "FeaturesetSpec.yaml"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), example("accounts")).unwrap();
        let loaded = LoadedSpec::load(&dir).unwrap();
        assert_eq!(loaded.file, dir.join(name));
    }
    let err = LoadedSpec::load(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("FeatureSetSpec.yaml or FeaturesetSpec.yaml"),
        "{err}"
    );
}

#[test]
fn every_spec_kind_round_trips_through_yaml() {
    let mut tx = FeatureSetSpec::from_yaml(&example("transactions"), Path::new(FILE)).unwrap();
    tx.features[0].description = Some("rows in 3 days: 'quoted' and: colon".into());
    tx.source.timestamp_column.format = Some("%Y-%m-%d %H:%M:%S".into());
    let back = FeatureSetSpec::from_yaml(&tx.to_yaml(), Path::new(FILE)).unwrap();
    assert_eq!(back, tx);
    let sql = FeatureSetSpec {
        feature_transformation: Some(Transformation::Sql(
            "SELECT * FROM source WHERE \"x\" > 1".into(),
        )),
        ..FeatureSetSpec::from_yaml(&example("accounts"), Path::new(FILE)).unwrap()
    };
    assert_eq!(
        FeatureSetSpec::from_yaml(&sql.to_yaml(), Path::new(FILE)).unwrap(),
        sql
    );

    let entity_yaml = "name: account\nversion: 1\ndescription: an account\nstage: Production\ntags:\n  team: fraud\nindex_columns:\n  - name: accountID\n    type: string\n";
    let entity = EntitySpec::from_yaml(entity_yaml, Path::new("account.yaml")).unwrap();
    assert_eq!(entity.version, "1");
    assert_eq!(
        EntitySpec::from_yaml(&entity.to_yaml(), Path::new("e")).unwrap(),
        entity
    );

    let asset_yaml = "$schema: http://azureml/sdk-2-0/FeatureSet.json\nname: transactions\nversion: '1'\nentities:\n  - azureml:account:1\nspecification:\n  path: ../spec\nstage: Development\nmaterialization_settings:\n  offline_enabled: true\n  resource:\n    instance_type: standard_e8s_v3\n  schedule:\n    type: recurrence\n    frequency: Day\n    interval: 1\n    time_zone: UTC\n    start_time: '2023-01-01T00:00:00'\n";
    let asset = FeatureSetAsset::from_yaml(asset_yaml, Path::new("asset.yaml")).unwrap();
    assert_eq!(asset.entities, vec!["account:1"]);
    assert!(
        asset
            .materialization_settings
            .as_ref()
            .unwrap()
            .offline_enabled
    );
    assert_eq!(
        FeatureSetAsset::from_yaml(&asset.to_yaml(), Path::new("a")).unwrap(),
        asset
    );

    let retrieval_yaml = "serialization_version: 2\nfeature_stores:\n  - uri: file:///store\n    features:\n      - feature_set: transactions:1\n        feature_name: transaction_7d_count\n      - feature_set: accounts:1\n        feature_name: accountAge\n        output_name: age\n";
    let retrieval = FeatureRetrievalSpec::from_yaml(retrieval_yaml, Path::new("r.yaml")).unwrap();
    assert_eq!(
        retrieval.feature_stores[0].features[1]
            .output_name
            .as_deref(),
        Some("age")
    );
    assert_eq!(
        FeatureRetrievalSpec::from_yaml(&retrieval.to_yaml(), Path::new("r")).unwrap(),
        retrieval
    );
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let e = errors("source:\n  type: parquet\n  path: [unclosed\n");
    let text = e.to_string();
    assert!(
        text.contains(FILE) && text.contains("malformed YAML at line"),
        "{text}"
    );
}

#[test]
fn several_problems_are_reported_together_with_field_paths() {
    let yaml = "source:\n  type: orc\n  path: x\n  colour: blue\nfeatures:\n  - name: a\n    type: int\n  - type: double\nindex_columns: []\n";
    let e = errors(yaml);
    assert_problem(
        &e,
        "source.type",
        "expected one of parquet, csv, delta, found 'orc'",
    );
    assert_problem(&e, "source.colour", "unknown field");
    assert_problem(&e, "source.timestamp_column", "required field is missing");
    assert_problem(&e, "features[0].type", "found 'int'");
    assert_problem(&e, "features[1].name", "required field is missing");
    assert_problem(&e, "index_columns", "at least one");
    assert!(e.errors.len() >= 6, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{FILE} is not a valid feature set spec"))
    );
}

const VALID_HEAD: &str = "source:\n  type: parquet\n  path: data\n  timestamp_column:\n    name: ts\nindex_columns:\n  - name: id\n    type: string\n";

#[test]
fn negative_offsets_and_zero_windows_are_rejected() {
    let yaml = format!(
        "{VALID_HEAD}source_lookback:\n  days: -1\ntemporal_join_lookback:\n  hours: 1.5\nfeatures:\n  - name: c\n    type: long\n\
         feature_transformation:\n  transformation_expressions:\n    - feature_name: c\n      aggregation: count\n      window:\n        minutes: 0\n"
    );
    let e = errors(&yaml);
    assert_problem(
        &e,
        "source_lookback.days",
        "non-negative whole number, found -1",
    );
    assert_problem(
        &e,
        "temporal_join_lookback.hours",
        "non-negative whole number",
    );
    assert_problem(
        &e,
        "feature_transformation.transformation_expressions[0].window",
        "longer than zero",
    );
}

#[test]
fn dsl_mistakes_are_named() {
    let yaml = format!(
        "{VALID_HEAD}source_lookback:\n  days: 1\nfeatures:\n  - name: s\n    type: double\n  - name: never_computed\n    type: double\n\
         feature_transformation:\n  transformation_expressions:\n    - feature_name: s\n      aggregation: median\n      source_column: x\n      window:\n        days: 1\n\
         \x20   - feature_name: undeclared\n      aggregation: sum\n      window:\n        days: 3\n"
    );
    let e = errors(&yaml);
    let p = "feature_transformation.transformation_expressions";
    assert_problem(
        &e,
        &format!("{p}[0].aggregation"),
        "expected one of sum, avg, min, max, count, latest, found 'median'",
    );
    assert_problem(
        &e,
        &format!("{p}[1].source_column"),
        "required for every aggregation but count",
    );
}

#[test]
fn dsl_features_must_match_declarations_and_lookback_cover_windows() {
    let yaml = format!(
        "{VALID_HEAD}source_lookback:\n  days: 1\nfeatures:\n  - name: s\n    type: double\n  - name: never_computed\n    type: double\n\
         feature_transformation:\n  transformation_expressions:\n    - feature_name: s\n      aggregation: sum\n      source_column: x\n      window:\n        days: 1\n\
         \x20   - feature_name: undeclared\n      aggregation: count\n      window:\n        days: 3\n"
    );
    let e = errors(&yaml);
    let p = "feature_transformation.transformation_expressions";
    assert_problem(
        &e,
        &format!("{p}[1].feature_name"),
        "'undeclared' is not declared in features",
    );
    assert_problem(
        &e,
        "features[1]",
        "'never_computed' is declared but no transformation expression computes it",
    );
    assert_problem(
        &e,
        "source_lookback",
        "shorter than the longest window (3d)",
    );
}

#[test]
fn python_transformers_and_bad_formats_get_guidance() {
    let yaml = "source:\n  type: parquet\n  path: data\n  timestamp_column:\n    name: ts\n    format: not a format\nindex_columns:\n  - name: id\n    type: string\n\
                features:\n  - name: id\n    type: string\nfeature_transformation_code:\n  path: ./code\n";
    let e = errors(yaml);
    assert_problem(&e, "feature_transformation_code", "not supported");
    assert_problem(
        &e,
        "source.timestamp_column.format",
        "is not a timestamp format",
    );
    assert_problem(&e, "features[0].name", "is an index column");
}

#[test]
fn retrieval_specs_reject_duplicate_output_names() {
    let yaml = "serialization_version: 2\nfeature_stores:\n  - uri: x\n    features:\n      - feature_set: a:1\n        feature_name: f\n      - feature_set: b\n        feature_name: f\n";
    let e = FeatureRetrievalSpec::from_yaml(yaml, Path::new("r.yaml")).unwrap_err();
    assert_problem(
        &e,
        "feature_stores[0].features[1]",
        "output name 'f' is used twice",
    );
    assert_problem(
        &e,
        "feature_stores[0].features[1].feature_set",
        "expected name:version",
    );
}
