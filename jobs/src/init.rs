//! `almanac spec init`: a feature set spec inferred from a source's schema.

use std::path::Path;

use crate::engine::Engine;
use crate::error::{JobsError, Result};
use crate::source::{Source, resolve_path};
use crate::spec::{ColumnSpec, FeatureSetSpec, FeatureSpec, FeatureType, Offset, SourceSpec};

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub source: SourceSpec,
    pub index_columns: Vec<String>,
    /// Source columns to leave out of the features.
    pub exclude: Vec<String>,
    pub source_lookback: Option<Offset>,
    pub temporal_join_lookback: Option<Offset>,
}

/// Builds a precomputed spec: every source column but the index columns, the timestamp and the
/// excluded ones becomes a feature of the matching type. Relative source paths are resolved
/// against `cwd` and written absolute, so the spec can be moved.
pub async fn infer_spec(
    engine: &Engine,
    options: &InitOptions,
    cwd: &Path,
) -> Result<FeatureSetSpec> {
    if options.index_columns.is_empty() {
        return Err(JobsError::InvalidInput(
            "give at least one index column (--index-column NAME)".into(),
        ));
    }
    let mut source_spec = options.source.clone();
    let (resolved, local) = resolve_path(&source_spec.path, cwd)?;
    source_spec.path = if local && !source_spec.path.starts_with("file://") {
        resolved
    } else {
        source_spec.path
    };
    let ctx = engine.session();
    let source = Source::open(&ctx, &source_spec, cwd).await?;
    let schema = source.raw_schema();
    let ts = &source_spec.timestamp_column.name;
    let mut problems = Vec::new();
    for name in options.index_columns.iter().chain(options.exclude.iter()) {
        if schema.field_with_name(name).is_err() {
            problems.push(format!("the source has no column '{name}'"));
        }
    }
    let mut index_columns = Vec::new();
    let mut features = Vec::new();
    for field in schema.fields() {
        let name = field.name();
        if name == ts || options.exclude.contains(name) {
            continue;
        }
        let Some(data_type) = FeatureType::for_arrow(field.data_type()) else {
            problems.push(format!(
                "column '{name}' is {}, which no feature type holds; leave it out with --exclude {name}",
                field.data_type()
            ));
            continue;
        };
        if options.index_columns.contains(name) {
            index_columns.push(ColumnSpec {
                name: name.clone(),
                data_type,
            });
        } else {
            features.push(FeatureSpec {
                name: name.clone(),
                data_type,
                description: None,
            });
        }
    }
    if features.is_empty() && problems.is_empty() {
        problems.push("no columns are left to be features".to_string());
    }
    if !problems.is_empty() {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(JobsError::Source {
            path: source.location.clone(),
            message: format!(
                "{}; its columns are: {}",
                problems.join("; "),
                columns.join(", ")
            ),
        });
    }
    // Keep the order the user gave for index columns.
    index_columns.sort_by_key(|c| options.index_columns.iter().position(|n| *n == c.name));
    let spec = FeatureSetSpec {
        source: source_spec,
        features,
        index_columns,
        source_lookback: options.source_lookback,
        temporal_join_lookback: options.temporal_join_lookback,
        feature_transformation: None,
    };
    // What we write must load: check it through the same reader users' files go through.
    FeatureSetSpec::from_yaml(&spec.to_yaml(), Path::new("(inferred spec)"))?;
    Ok(spec)
}
