//! `FeatureSetSpec.yaml`: where a feature set's data comes from and how features are computed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use super::reader::{Reader, child, describe};
use super::{
    FeatureType, Offset, SpecErrors, finish, parse_yaml, read_text, to_yaml, write_atomic,
};
use crate::error::{JobsError, Result};

/// File names a spec folder may hold; the first is the one Almanac writes. The second is the
/// spelling the managed feature store's tutorial uses.
pub const SPEC_FILE_NAMES: [&str; 2] = ["FeatureSetSpec.yaml", "FeaturesetSpec.yaml"];

const KIND: &str = "feature set spec";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSetSpec {
    pub source: SourceSpec,
    pub features: Vec<FeatureSpec>,
    pub index_columns: Vec<ColumnSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lookback: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_join_lookback: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_transformation: Option<Transformation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// A file, folder or glob; a plain or `file://` path, or an object-store URL. Relative paths
    /// are relative to the folder holding the spec file.
    pub path: String,
    pub timestamp_column: TimestampColumn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_delay: Option<Offset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Parquet,
    Csv,
    Delta,
}

impl SourceKind {
    pub const ALL: [(&'static str, SourceKind); 3] = [
        ("parquet", SourceKind::Parquet),
        ("csv", SourceKind::Csv),
        ("delta", SourceKind::Delta),
    ];

    pub fn name(&self) -> &'static str {
        SourceKind::ALL
            .iter()
            .find(|(_, k)| k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimestampColumn {
    pub name: String,
    /// How a string or integer column is read: a chrono (`%Y-%m-%d %H:%M`) or Java-style
    /// (`yyyy-MM-dd HH:mm`) pattern for strings, or `epoch_s|epoch_ms|epoch_us|epoch_ns` for
    /// integers. Absent: ISO-8601 strings, epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: FeatureType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: FeatureType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "TransformationYaml", from = "TransformationYaml")]
pub enum Transformation {
    /// A query over a table named `source`.
    Sql(String),
    /// The window-aggregation DSL.
    TransformationExpressions(Vec<WindowAggregation>),
}

/// How a [`Transformation`] is written: a mapping with one of two keys. (serde_yaml would
/// otherwise write an enum as a YAML tag, which the managed feature store's files never use.)
#[derive(Serialize, Deserialize)]
struct TransformationYaml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transformation_expressions: Option<Vec<WindowAggregation>>,
}

impl From<Transformation> for TransformationYaml {
    fn from(t: Transformation) -> Self {
        match t {
            Transformation::Sql(sql) => TransformationYaml {
                sql: Some(sql),
                transformation_expressions: None,
            },
            Transformation::TransformationExpressions(e) => TransformationYaml {
                sql: None,
                transformation_expressions: Some(e),
            },
        }
    }
}

impl From<TransformationYaml> for Transformation {
    fn from(t: TransformationYaml) -> Self {
        match (t.sql, t.transformation_expressions) {
            (Some(sql), _) => Transformation::Sql(sql),
            (None, e) => Transformation::TransformationExpressions(e.unwrap_or_default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAggregation {
    /// Written for compatibility with the managed feature store's files.
    #[serde(rename = "__type__", default = "window_aggregation_tag")]
    pub type_tag: String,
    pub feature_name: String,
    pub aggregation: Aggregation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_column: Option<String>,
    pub window: Offset,
}

fn window_aggregation_tag() -> String {
    "window_aggregation".to_string()
}

impl WindowAggregation {
    pub fn new(
        feature_name: &str,
        aggregation: Aggregation,
        source_column: Option<&str>,
        window: Offset,
    ) -> Self {
        WindowAggregation {
            type_tag: window_aggregation_tag(),
            feature_name: feature_name.to_string(),
            aggregation,
            source_column: source_column.map(str::to_string),
            window,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Latest,
}

impl Aggregation {
    pub const ALL: [(&'static str, Aggregation); 6] = [
        ("sum", Aggregation::Sum),
        ("avg", Aggregation::Avg),
        ("min", Aggregation::Min),
        ("max", Aggregation::Max),
        ("count", Aggregation::Count),
        ("latest", Aggregation::Latest),
    ];
}

/// A spec together with where it was read from; relative source paths resolve against `dir`.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: FeatureSetSpec,
    pub file: PathBuf,
    pub dir: PathBuf,
}

impl LoadedSpec {
    /// Loads a spec from a folder holding `FeatureSetSpec.yaml` (or `FeaturesetSpec.yaml`), or
    /// from the file itself.
    pub fn load(path: &Path) -> Result<LoadedSpec> {
        let file = if path.is_dir() {
            SPEC_FILE_NAMES
                .iter()
                .map(|n| path.join(n))
                .find(|f| f.is_file())
                .ok_or_else(|| {
                    JobsError::InvalidInput(format!(
                        "{} holds no feature set spec: expected a file named {}",
                        path.display(),
                        SPEC_FILE_NAMES.join(" or ")
                    ))
                })?
        } else if path.is_file() {
            path.to_path_buf()
        } else {
            return Err(JobsError::InvalidInput(format!(
                "{} does not exist: expected a folder holding {} or the file itself",
                path.display(),
                SPEC_FILE_NAMES[0]
            )));
        };
        let spec = FeatureSetSpec::from_yaml(&read_text(&file)?, &file)?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(LoadedSpec { spec, file, dir })
    }
}

impl FeatureSetSpec {
    /// Parses and validates a spec; `file` is only used in error messages.
    pub fn from_yaml(text: &str, file: &Path) -> Result<FeatureSetSpec, SpecErrors> {
        let value = parse_yaml(text, file, KIND)?;
        let mut r = Reader::default();
        let spec = read_spec(&mut r, &value);
        if let Some(spec) = &spec {
            validate(&mut r, spec);
        }
        finish(r, spec, file, KIND)
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }

    /// Writes `FeatureSetSpec.yaml` into `dir`.
    pub fn write_to_dir(&self, dir: &Path) -> Result<PathBuf> {
        let file = dir.join(SPEC_FILE_NAMES[0]);
        write_atomic(&file, self.to_yaml().as_bytes())?;
        Ok(file)
    }

    pub fn index_names(&self) -> Vec<&str> {
        self.index_columns.iter().map(|c| c.name.as_str()).collect()
    }

    pub fn timestamp_name(&self) -> &str {
        &self.source.timestamp_column.name
    }

    pub fn source_delay(&self) -> Offset {
        self.source.source_delay.unwrap_or_default()
    }

    pub fn source_lookback(&self) -> Offset {
        self.source_lookback.unwrap_or_default()
    }

    /// The DSL's aggregations, if the spec uses it.
    pub fn window_aggregations(&self) -> Option<&[WindowAggregation]> {
        match &self.feature_transformation {
            Some(Transformation::TransformationExpressions(e)) => Some(e),
            _ => None,
        }
    }
}

fn read_spec(r: &mut Reader, value: &Value) -> Option<FeatureSetSpec> {
    let top = r.mapping(
        value,
        "",
        &[
            "$schema",
            "source",
            "features",
            "index_columns",
            "source_lookback",
            "temporal_join_lookback",
            "feature_transformation",
            "feature_transformation_code",
        ],
    )?;
    if top.contains_key("feature_transformation_code") {
        r.error(
            "feature_transformation_code",
            "Python transformer classes are not supported; express the transformation as \
             feature_transformation.sql (a query over a table named `source`) or \
             feature_transformation.transformation_expressions (window aggregations)",
        );
    }
    let source = r
        .required(top, "", "source")
        .and_then(|v| read_source(r, v));
    let features = r.list(top, "features", |r, v, p| {
        let m = r.mapping(v, p, &["name", "type", "description"])?;
        let name = r.req_string(m, p, "name");
        let data_type = read_type(r, m, p);
        let description = r.opt_string(m, p, "description");
        Some(FeatureSpec {
            name: name?,
            data_type: data_type?,
            description,
        })
    });
    let index_columns = super::feature_set_columns(r, top, "index_columns");
    let source_lookback = r.opt_offset(top, "", "source_lookback");
    let temporal_join_lookback = r.opt_offset(top, "", "temporal_join_lookback");
    let feature_transformation = r
        .optional(top, "feature_transformation")
        .and_then(|v| read_transformation(r, v));
    Some(FeatureSetSpec {
        source: source?,
        features: features?,
        index_columns: index_columns?,
        source_lookback,
        temporal_join_lookback,
        feature_transformation,
    })
}

fn read_type(r: &mut Reader, m: &Mapping, path: &str) -> Option<FeatureType> {
    let v = r.required(m, path, "type")?;
    r.choice(v, &child(path, "type"), &FeatureType::ALL)
}

fn read_source(r: &mut Reader, value: &Value) -> Option<SourceSpec> {
    let p = "source";
    let m = r.mapping(
        value,
        p,
        &["type", "path", "timestamp_column", "source_delay"],
    )?;
    let kind = r
        .required(m, p, "type")
        .and_then(|v| r.choice(v, "source.type", &SourceKind::ALL));
    let path = r.req_string(m, p, "path");
    let timestamp_column = r.required(m, p, "timestamp_column").and_then(|v| {
        let tp = "source.timestamp_column";
        let tm = r.mapping(v, tp, &["name", "format"])?;
        let name = r.req_string(tm, tp, "name");
        let format = r.opt_string(tm, tp, "format");
        if let Some(f) = &format
            && let Err(message) = crate::timestamp::TimestampFormat::parse(Some(f))
        {
            r.error(child(tp, "format"), message);
        }
        Some(TimestampColumn {
            name: name?,
            format,
        })
    });
    let source_delay = r.opt_offset(m, p, "source_delay");
    Some(SourceSpec {
        kind: kind?,
        path: path?,
        timestamp_column: timestamp_column?,
        source_delay,
    })
}

fn read_transformation(r: &mut Reader, value: &Value) -> Option<Transformation> {
    let p = "feature_transformation";
    let m = r.mapping(value, p, &["sql", "transformation_expressions"])?;
    match (
        r.optional(m, "sql"),
        r.optional(m, "transformation_expressions"),
    ) {
        (Some(_), Some(_)) => {
            r.error(p, "give either sql or transformation_expressions, not both");
            None
        }
        (None, None) => {
            r.error(
                p,
                "expected sql (a query over a table named `source`) or transformation_expressions",
            );
            None
        }
        (Some(sql), None) => r.string(sql, &child(p, "sql")).map(Transformation::Sql),
        (None, Some(exprs)) => {
            let lp = child(p, "transformation_expressions");
            let seq = r.sequence(exprs, &lp)?;
            if seq.is_empty() {
                r.error(lp, "expected at least one window aggregation");
                return None;
            }
            let items: Vec<Option<WindowAggregation>> = seq
                .iter()
                .enumerate()
                .map(|(i, v)| read_window_aggregation(r, v, &format!("{lp}[{i}]")))
                .collect();
            items
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Transformation::TransformationExpressions)
        }
    }
}

fn read_window_aggregation(r: &mut Reader, value: &Value, p: &str) -> Option<WindowAggregation> {
    let m = r.mapping(
        value,
        p,
        &[
            "__type__",
            "feature_name",
            "aggregation",
            "source_column",
            "window",
        ],
    )?;
    if let Some(tag) = r.optional(m, "__type__")
        && tag.as_str() != Some("window_aggregation")
    {
        r.error(
            child(p, "__type__"),
            format!("expected window_aggregation, found {}", describe(tag)),
        );
    }
    let feature_name = r.req_string(m, p, "feature_name");
    let aggregation = r
        .required(m, p, "aggregation")
        .and_then(|v| r.choice(v, &child(p, "aggregation"), &Aggregation::ALL));
    let source_column = r.opt_string(m, p, "source_column");
    let window = r
        .required(m, p, "window")
        .and_then(|v| r.offset(v, &child(p, "window")));
    if let Some(w) = window
        && w.is_zero()
    {
        r.error(child(p, "window"), "a window must be longer than zero");
    }
    match aggregation {
        Some(Aggregation::Count) => {}
        Some(_) if source_column.is_none() => {
            r.error(
                child(p, "source_column"),
                "required for every aggregation but count",
            );
        }
        _ => {}
    }
    Some(WindowAggregation::new(
        &feature_name?,
        aggregation?,
        source_column.as_deref(),
        window?,
    ))
}

/// Checks that need the whole spec: names unique and not colliding, DSL features declared.
fn validate(r: &mut Reader, spec: &FeatureSetSpec) {
    let ts = spec.timestamp_name();
    let mut seen = BTreeSet::new();
    for (i, c) in spec.index_columns.iter().enumerate() {
        if c.name == ts {
            r.error(
                format!("index_columns[{i}].name"),
                format!("'{}' is the timestamp column", c.name),
            );
        }
        if !seen.insert(c.name.as_str()) {
            r.error(
                format!("index_columns[{i}].name"),
                format!("'{}' is listed twice", c.name),
            );
        }
    }
    let mut features = BTreeSet::new();
    for (i, f) in spec.features.iter().enumerate() {
        let path = format!("features[{i}].name");
        if f.name == ts {
            r.error(
                path,
                format!(
                    "'{}' is the timestamp column; it cannot also be a feature",
                    f.name
                ),
            );
        } else if seen.contains(f.name.as_str()) {
            r.error(
                path,
                format!(
                    "'{}' is an index column; it cannot also be a feature",
                    f.name
                ),
            );
        } else if !features.insert(f.name.as_str()) {
            r.error(path, format!("'{}' is listed twice", f.name));
        }
    }
    if let Some(exprs) = spec.window_aggregations() {
        let p = "feature_transformation.transformation_expressions";
        let mut produced = BTreeSet::new();
        let mut longest = Offset::ZERO;
        for (i, e) in exprs.iter().enumerate() {
            if !features.contains(e.feature_name.as_str()) {
                r.error(
                    format!("{p}[{i}].feature_name"),
                    format!("'{}' is not declared in features", e.feature_name),
                );
            }
            if !produced.insert(e.feature_name.as_str()) {
                r.error(
                    format!("{p}[{i}].feature_name"),
                    format!("'{}' is computed twice", e.feature_name),
                );
            }
            longest = longest.max_by_length(e.window);
        }
        for (i, f) in spec.features.iter().enumerate() {
            if !produced.contains(f.name.as_str()) {
                r.error(
                    format!("features[{i}]"),
                    format!(
                        "'{}' is declared but no transformation expression computes it",
                        f.name
                    ),
                );
            }
        }
        if spec.source_lookback().micros() < longest.micros() {
            r.error(
                "source_lookback",
                format!(
                    "{} is shorter than the longest window ({longest}); rows near the start of a \
                     feature window would aggregate an incomplete history. Set it to at least {longest}",
                    spec.source_lookback()
                ),
            );
        }
    }
}

impl Offset {
    fn max_by_length(self, other: Offset) -> Offset {
        if other.micros() > self.micros() {
            other
        } else {
            self
        }
    }
}
