//! `almanac-train`: the steps of the example training pipeline after feature retrieval.
//!
//! [`train`] fits a logistic regression (linfa) on a retrieval's output, holding out the last
//! part of its time range; [`evaluate`] recomputes the held-out AUC and fails below a
//! threshold; [`predict`] scores new rows with a trained model. The model folder holds
//! `model.json` (the fitted model and its feature scaling), `metrics.json` and the
//! `feature_retrieval_spec.yaml` the training data was retrieved with, so it can be registered
//! with `almanac model register` as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use almanac_jobs::spec::{FeatureRetrievalSpec, RETRIEVAL_SPEC_FILE_NAME};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use linfa::prelude::*;
use linfa_logistic::{FittedLogisticRegression, LogisticRegression};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Input(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {message}")]
    Data { context: String, message: String },
    #[error("training failed: {0}")]
    Fit(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrainError {
    let context = context.into();
    move |source| TrainError::Io { context, source }
}

/// What `model.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainedModel {
    pub label: String,
    pub timestamp_column: String,
    /// Feature columns, in the order of the model's coefficients.
    pub features: Vec<String>,
    /// Per feature: the training mean (also used for nulls) and standard deviation.
    pub means: Vec<f64>,
    pub stds: Vec<f64>,
    /// Rows at or after this instant (µs) were held out of training.
    pub holdout_from: i64,
    pub model: FittedLogisticRegression<f64, bool>,
}

/// What `metrics.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub rows_train: usize,
    pub rows_holdout: usize,
    pub positives_train: usize,
    pub auc_holdout: f32,
}

pub struct TrainOptions {
    /// A retrieval's output folder: `data/*.parquet` and `feature_retrieval_spec.yaml`.
    pub data: PathBuf,
    pub label: String,
    pub timestamp_column: String,
    /// Fraction of the time range, at its end, held out for evaluation.
    pub holdout: f64,
    /// The model folder to write.
    pub out: PathBuf,
}

/// All rows of a retrieval output (files in name order).
fn read_output(dir: &Path) -> Result<RecordBatch> {
    let data = dir.join("data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .map_err(io(format!("cannot read {}", data.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TrainError::Input(format!(
            "{} holds no parquet files: expected the output of `almanac retrieve`",
            data.display()
        )));
    }
    let mut batches = Vec::new();
    for f in &files {
        let file = std::fs::File::open(f).map_err(io(format!("cannot open {}", f.display())))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| TrainError::Data {
                context: f.display().to_string(),
                message: e.to_string(),
            })?;
        for b in reader {
            batches.push(b.map_err(|e| TrainError::Data {
                context: f.display().to_string(),
                message: e.to_string(),
            })?);
        }
    }
    concat_batches(&batches[0].schema(), &batches).map_err(|e| TrainError::Data {
        context: dir.display().to_string(),
        message: e.to_string(),
    })
}

fn column(batch: &RecordBatch, name: &str, what: &str) -> Result<ArrayRef> {
    batch.column_by_name(name).cloned().ok_or_else(|| {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        TrainError::Input(format!(
            "the data has no {what} column '{name}'; its columns are: {}",
            names.join(", ")
        ))
    })
}

/// A numeric view of a column (booleans as 0/1), nulls as `None`.
fn numeric(a: &ArrayRef, name: &str) -> Result<Vec<Option<f64>>> {
    let as_f64 = match a.data_type() {
        DataType::Boolean => cast(
            &cast(a, &DataType::Int8).expect("bool casts"),
            &DataType::Float64,
        ),
        t if t.is_numeric() => cast(a, &DataType::Float64),
        other => {
            return Err(TrainError::Input(format!(
                "feature '{name}' is {other}; the classifier takes numeric and boolean features \
                 (leave it out of the retrieval spec or encode it)"
            )));
        }
    }
    .map_err(|e| TrainError::Input(format!("feature '{name}': {e}")))?;
    let v = as_f64.as_primitive::<Float64Type>();
    Ok((0..v.len())
        .map(|i| (v.is_valid(i) && v.value(i).is_finite()).then(|| v.value(i)))
        .collect())
}

fn timestamps(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let a = column(batch, name, "timestamp")?;
    let micros = cast(
        &cast(
            a.as_ref(),
            &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
        )
        .map_err(|e| TrainError::Input(format!("timestamp column '{name}': {e}")))?,
        &DataType::Int64,
    )
    .map_err(|e| TrainError::Input(format!("timestamp column '{name}': {e}")))?;
    let v = micros.as_primitive::<Int64Type>();
    if v.null_count() > 0 {
        return Err(TrainError::Input(format!(
            "timestamp column '{name}' has nulls"
        )));
    }
    Ok(v.values().to_vec())
}

fn labels(batch: &RecordBatch, name: &str) -> Result<Vec<bool>> {
    let a = column(batch, name, "label")?;
    let v = numeric(&a, name)?;
    v.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Some(x) if *x == 0.0 => Ok(false),
            Some(x) if *x == 1.0 => Ok(true),
            other => Err(TrainError::Input(format!(
                "label '{name}' must be 0/1 or boolean; row {i} holds {other:?}"
            ))),
        })
        .collect()
}

/// The feature columns a retrieval spec lists, by output name.
fn feature_names(spec: &FeatureRetrievalSpec) -> Vec<String> {
    spec.feature_stores
        .iter()
        .flat_map(|s| s.features.iter())
        .map(|f| {
            f.output_name
                .clone()
                .unwrap_or_else(|| f.feature_name.clone())
        })
        .collect()
}

/// The standardized design matrix of `rows` (nulls → the training mean).
fn design(
    columns: &[Vec<Option<f64>>],
    means: &[f64],
    stds: &[f64],
    rows: &[usize],
) -> Array2<f64> {
    Array2::from_shape_fn((rows.len(), columns.len()), |(r, c)| {
        let v = columns[c][rows[r]].unwrap_or(means[c]);
        (v - means[c]) / stds[c]
    })
}

/// P(label = true). linfa's `predict_probabilities` gives the probability of the class that
/// was more frequent in training (`labels().pos`), which for rare positives is `false`.
fn probability_of_true(
    model: &FittedLogisticRegression<f64, bool>,
    x: &Array2<f64>,
) -> Array1<f64> {
    let p = model.predict_probabilities(x);
    if model.labels().pos.class {
        p
    } else {
        p.mapv(|v| 1.0 - v)
    }
}

fn auc(probabilities: &Array1<f64>, truth: &[bool]) -> Result<f32> {
    let pr: Vec<Pr> = probabilities.iter().map(|p| Pr::new(*p as f32)).collect();
    pr.as_slice()
        .roc(truth)
        .map(|roc| roc.area_under_curve())
        .map_err(|e| TrainError::Fit(format!("cannot compute the AUC: {e}")))
}

/// Trains the classifier and writes the model folder.
pub fn train(options: &TrainOptions) -> Result<(TrainedModel, Metrics)> {
    if !(0.0..1.0).contains(&options.holdout) || options.holdout == 0.0 {
        return Err(TrainError::Input(format!(
            "--holdout {} must be a fraction between 0 and 1",
            options.holdout
        )));
    }
    let spec_file = options.data.join(RETRIEVAL_SPEC_FILE_NAME);
    let spec =
        FeatureRetrievalSpec::load(&spec_file).map_err(|e| TrainError::Input(format!("{e}")))?;
    let features = feature_names(&spec);
    let batch = read_output(&options.data)?;
    let y = labels(&batch, &options.label)?;
    let ts = timestamps(&batch, &options.timestamp_column)?;
    let columns = features
        .iter()
        .map(|f| numeric(&column(&batch, f, "feature")?, f))
        .collect::<Result<Vec<_>>>()?;
    let (lo, hi) = (
        *ts.iter().min().unwrap_or(&0),
        *ts.iter().max().unwrap_or(&0),
    );
    let holdout_from = hi - ((hi - lo) as f64 * options.holdout) as i64;
    let (train_rows, holdout_rows): (Vec<usize>, Vec<usize>) =
        (0..ts.len()).partition(|&i| ts[i] < holdout_from);
    let positives = train_rows.iter().filter(|&&i| y[i]).count();
    if train_rows.is_empty()
        || holdout_rows.is_empty()
        || positives == 0
        || positives == train_rows.len()
    {
        return Err(TrainError::Input(format!(
            "cannot train: {} training rows ({positives} positive) and {} held-out rows; both \
             parts need rows and training needs both labels",
            train_rows.len(),
            holdout_rows.len()
        )));
    }
    let mut means = Vec::new();
    let mut stds = Vec::new();
    for c in &columns {
        let vals: Vec<f64> = train_rows.iter().filter_map(|&i| c[i]).collect();
        let n = vals.len().max(1) as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        means.push(mean);
        stds.push(if var > 0.0 { var.sqrt() } else { 1.0 });
    }
    let x = design(&columns, &means, &stds, &train_rows);
    let targets: Array1<bool> = train_rows.iter().map(|&i| y[i]).collect();
    let model = LogisticRegression::default()
        .max_iterations(300)
        .alpha(1e-3)
        .fit(&Dataset::new(x, targets))
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    let trained = TrainedModel {
        label: options.label.clone(),
        timestamp_column: options.timestamp_column.clone(),
        features,
        means,
        stds,
        holdout_from,
        model,
    };
    let holdout_truth: Vec<bool> = holdout_rows.iter().map(|&i| y[i]).collect();
    let probabilities = probability_of_true(
        &trained.model,
        &design(&columns, &trained.means, &trained.stds, &holdout_rows),
    );
    let metrics = Metrics {
        rows_train: train_rows.len(),
        rows_holdout: holdout_rows.len(),
        positives_train: positives,
        auc_holdout: auc(&probabilities, &holdout_truth)?,
    };
    write_model(&options.out, &trained, &metrics, &spec_file)?;
    Ok((trained, metrics))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Fit(format!("cannot serialize {}: {e}", path.display())))?;
    almanac_jobs::spec::write_atomic(path, text.as_bytes())
        .map_err(|e| TrainError::Input(e.to_string()))
}

fn write_model(
    dir: &Path,
    model: &TrainedModel,
    metrics: &Metrics,
    spec_file: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    write_json(&dir.join("model.json"), model)?;
    write_json(&dir.join("metrics.json"), metrics)?;
    std::fs::copy(spec_file, dir.join(RETRIEVAL_SPEC_FILE_NAME))
        .map_err(io(format!("cannot copy {}", spec_file.display())))?;
    Ok(())
}

fn load_model(dir: &Path) -> Result<TrainedModel> {
    let path = dir.join("model.json");
    let text = std::fs::read_to_string(&path).map_err(io(format!(
        "cannot read {} (is {} a model folder written by `almanac train`?)",
        path.display(),
        dir.display()
    )))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
}

/// Recomputes the AUC on the rows of `data` at or after the model's held-out instant.
pub fn evaluate(model_dir: &Path, data: &Path) -> Result<(f32, usize)> {
    let model = load_model(model_dir)?;
    let batch = read_output(data)?;
    let y = labels(&batch, &model.label)?;
    let ts = timestamps(&batch, &model.timestamp_column)?;
    let rows: Vec<usize> = (0..ts.len())
        .filter(|&i| ts[i] >= model.holdout_from)
        .collect();
    if rows.is_empty() {
        return Err(TrainError::Input(
            "no rows of the data fall in the model's held-out period".to_string(),
        ));
    }
    let columns = model
        .features
        .iter()
        .map(|f| numeric(&column(&batch, f, "feature")?, f))
        .collect::<Result<Vec<_>>>()?;
    let p = probability_of_true(
        &model.model,
        &design(&columns, &model.means, &model.stds, &rows),
    );
    let truth: Vec<bool> = rows.iter().map(|&i| y[i]).collect();
    Ok((auc(&p, &truth)?, rows.len()))
}

/// Scores every row of a retrieval output; writes its columns plus `score` to `out`.
pub fn predict(model_dir: &Path, data: &Path, out: &Path) -> Result<usize> {
    let model = load_model(model_dir)?;
    let batch = read_output(data)?;
    let columns = model
        .features
        .iter()
        .map(|f| numeric(&column(&batch, f, "feature")?, f))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<usize> = (0..batch.num_rows()).collect();
    let p = probability_of_true(
        &model.model,
        &design(&columns, &model.means, &model.stds, &rows),
    );
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("score", DataType::Float64, false));
    let mut arrays = batch.columns().to_vec();
    arrays.push(Arc::new(Float64Array::from(p.to_vec())));
    let scored = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| {
        TrainError::Data {
            context: "scoring".into(),
            message: e.to_string(),
        }
    })?;
    let tmp = out.with_extension("parquet.tmp");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io(format!("cannot create {}", parent.display())))?;
    }
    let file =
        std::fs::File::create(&tmp).map_err(io(format!("cannot create {}", tmp.display())))?;
    let write = ArrowWriter::try_new(file, scored.schema(), None)
        .and_then(|mut w| w.write(&scored).and_then(|()| w.close().map(|_| ())));
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::Data {
            context: out.display().to_string(),
            message: e.to_string(),
        });
    }
    std::fs::rename(&tmp, out).map_err(io(format!("cannot write {}", out.display())))?;
    Ok(scored.num_rows())
}
