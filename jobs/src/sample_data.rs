//! Deterministic, tutorial-shaped sample data: transactions, periodic account snapshots and the
//! `train` / `batch_inference` observation sets.
//!
//! The same options always give the same bytes. A small share of accounts are fraudsters: they
//! are young, have payment rejects, and transact in bursts of large, often proxied purchases,
//! which is where most `is_fraud` labels fall — so the tutorial's features (7-day counts and
//! sums, account age, rejects) really predict the label.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{JobsError, Result};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// Rows per parquet file.
const FILE_ROWS: usize = 250_000;

#[derive(Debug, Clone)]
pub struct SampleDataOptions {
    pub accounts: usize,
    pub transactions: usize,
    pub days: u32,
    pub seed: u64,
    /// First day of data, microseconds since the epoch (midnight UTC).
    pub start: i64,
    /// Days between account snapshots (the first is a week before `start`).
    pub account_snapshot_days: u32,
    /// The share of all transactions that go to one account (`A1000000`), spread over the
    /// whole period: a hot key for benchmarks. 0 leaves the data as it always was.
    pub hot_key_share: f64,
    /// Zipf-distributed activity with this exponent: the account of rank k (in id order) has
    /// weight 1/k^s. `None` keeps the tutorial-like mix.
    pub zipf: Option<f64>,
}

impl Default for SampleDataOptions {
    fn default() -> Self {
        SampleDataOptions {
            accounts: 1_000,
            transactions: 50_000,
            days: 60,
            seed: 42,
            start: crate::time::parse_instant("2023-01-01").unwrap_or(0),
            account_snapshot_days: 7,
            hot_key_share: 0.0,
            zipf: None,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SampleDataSummary {
    pub root: PathBuf,
    pub transactions: usize,
    pub account_snapshots: usize,
    pub train_rows: usize,
    pub batch_inference_rows: usize,
    pub fraud_rate: f64,
    /// Where training observations end and batch-inference observations begin.
    pub inference_start: i64,
}

/// The folders written under the output folder.
pub const FOLDERS: [&str; 3] = ["transactions", "accounts", "observations"];

struct Account {
    id: String,
    country: &'static str,
    registered: bool,
    age_days: f64,
    fraudster: bool,
    /// Centre of the fraudster's burst of activity.
    burst: i64,
}

const COUNTRIES: [(&str, f64, i64); 8] = [
    // (code, USD per unit of local currency, UTC offset hours)
    ("US", 1.0, -5),
    ("GB", 1.25, 0),
    ("IN", 0.012, 5),
    ("DE", 1.08, 1),
    ("FR", 1.08, 1),
    ("BR", 0.2, -3),
    ("CA", 0.74, -5),
    ("AU", 0.66, 10),
];

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; deterministic given the generator.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Writes sample data under `out`: `transactions/`, `accounts/`, `observations/train/` and
/// `observations/batch_inference/`, each a folder of parquet files. Refuses to overwrite
/// existing folders unless `force`; data is written to a temporary folder first, so a failure
/// leaves nothing half-written.
pub fn generate(out: &Path, options: &SampleDataOptions, force: bool) -> Result<SampleDataSummary> {
    if options.accounts == 0 || options.transactions == 0 || options.days < 15 {
        return Err(JobsError::InvalidInput(
            "sample data needs at least 1 account, 1 transaction and 15 days (7 days of history, training and inference periods)"
                .to_string(),
        ));
    }
    let existing: Vec<PathBuf> = FOLDERS
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() && !force {
        return Err(JobsError::InvalidInput(format!(
            "{} already exists; pass --force to replace the sample data in {}",
            existing[0].display(),
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| JobsError::io("cannot create folder", out, e))?;
    let staging = out.join(format!(".sample-data-{}", std::process::id()));
    let result = write_all(&staging, options);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let mut summary = result?;
    for folder in FOLDERS {
        let target = out.join(folder);
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .map_err(|e| JobsError::io("cannot replace", &target, e))?;
        }
        std::fs::rename(staging.join(folder), &target)
            .map_err(|e| JobsError::io("cannot move into place", &target, e))?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    summary.root = out.to_path_buf();
    Ok(summary)
}

fn write_all(root: &Path, o: &SampleDataOptions) -> Result<SampleDataSummary> {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let span = i64::from(o.days) * DAY;
    let accounts: Vec<Account> = (0..o.accounts)
        .map(|i| {
            let fraudster = rng.random_bool(0.05);
            let country = COUNTRIES[rng.random_range(0..COUNTRIES.len())].0;
            Account {
                id: format!("A{:07}", 1_000_000 + i),
                country,
                registered: rng.random_bool(if fraudster { 0.3 } else { 0.8 }),
                age_days: if fraudster {
                    rng.random_range(1.0..90.0)
                } else {
                    rng.random_range(30.0..3000.0)
                },
                fraudster,
                burst: o.start + rng.random_range(7 * DAY..span),
            }
        })
        .collect();

    // Skewed activity: a few accounts are much busier than most.
    let weights: Vec<f64> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let base = 1.0 / ((i % 97 + 1) as f64).powf(0.7);
            if i == 0 && o.hot_key_share > 0.0 && accounts.len() > 1 {
                // The hot account has exactly its share, none of the others'.
                0.0
            } else if let Some(s) = o.zipf {
                1.0 / ((i + 1) as f64).powf(s)
            } else if a.fraudster {
                base * 3.0
            } else {
                base
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }

    struct Txn {
        id: String,
        account: usize,
        amount: f64,
        usd: f64,
        local_hour: i64,
        proxy: bool,
        digital: i64,
        physical: i64,
        fraud: bool,
        ts: i64,
    }
    let mut txns: Vec<Txn> = (0..o.transactions)
        .map(|i| {
            // Draws only when asked for, so data without a hot key is what it always was.
            let hot = o.hot_key_share > 0.0 && rng.random_bool(o.hot_key_share.min(1.0));
            let r: f64 = rng.random();
            let account = if hot {
                0
            } else {
                cumulative
                    .partition_point(|c| *c < r)
                    .min(accounts.len() - 1)
            };
            let a = &accounts[account];
            let in_burst = !hot && a.fraudster && rng.random_bool(0.7);
            let ts = if in_burst {
                (a.burst + (normal(&mut rng) * 12.0 * HOUR as f64) as i64)
                    .clamp(o.start, o.start + span - 1)
            } else {
                o.start + rng.random_range(0..span)
            };
            // Whole seconds keep the data readable; exact-edge behaviour is tested elsewhere.
            let ts = ts - ts.rem_euclid(1_000_000);
            let scale = if in_burst { 3.5 } else { 1.0 };
            let amount = round2((3.3 + 0.9 * normal(&mut rng)).exp() * scale);
            let (_, fx, offset) = COUNTRIES
                .iter()
                .find(|(c, _, _)| *c == a.country)
                .copied()
                .unwrap_or(COUNTRIES[0]);
            let proxy = rng.random_bool(if in_burst { 0.5 } else { 0.04 });
            let fraud = rng.random_bool(if in_burst {
                0.55
            } else if a.fraudster {
                0.05
            } else {
                0.004
            });
            Txn {
                id: format!("T{:09}", i),
                account,
                amount,
                usd: round2(amount * fx),
                local_hour: ((ts / HOUR) + offset).rem_euclid(24),
                proxy,
                digital: rng.random_range(0..if in_burst { 8 } else { 3 }),
                physical: rng.random_range(0..4),
                fraud,
                ts,
            }
        })
        .collect();
    txns.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));

    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
    let txn_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("transactionID", DataType::Utf8, false),
        Field::new("accountID", DataType::Utf8, false),
        Field::new("transactionAmount", DataType::Float64, false),
        Field::new("transactionAmountUSD", DataType::Float64, false),
        Field::new("localHour", DataType::Int64, false),
        Field::new("isProxyIP", DataType::Boolean, false),
        Field::new("digitalItemCount", DataType::Int64, false),
        Field::new("physicalItemCount", DataType::Int64, false),
        Field::new("is_fraud", DataType::Int64, false),
        Field::new("timestamp", ts_type.clone(), false),
    ]));
    let txn_batch = |rows: &[Txn]| -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| t.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| accounts[t.account].id.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|t| t.amount),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|t| t.usd))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| t.local_hour),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|t| t.proxy).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| t.digital))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| t.physical),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| i64::from(t.fraud)),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|t| t.ts),
            )),
        ];
        batch(&txn_schema, cols)
    };
    for (i, chunk) in txns.chunks(FILE_ROWS).enumerate() {
        write_parquet(
            &root
                .join("transactions")
                .join(format!("part-{i:05}.parquet")),
            &txn_batch(chunk)?,
        )?;
    }

    // Weekly account snapshots, the first a week before the data starts so every transaction
    // has one within the accounts set's lookback.
    let acct_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("accountID", DataType::Utf8, false),
        Field::new("accountCountry", DataType::Utf8, false),
        Field::new("isUserRegistered", DataType::Boolean, false),
        Field::new("numPaymentRejects1dPerUser", DataType::Float64, true),
        Field::new("accountAge", DataType::Float64, false),
        Field::new("timestamp", ts_type.clone(), false),
    ]));
    let (mut ids, mut countries, mut registered, mut rejects, mut ages, mut stamps) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut snapshot = o.start - 7 * DAY;
    while snapshot < o.start + span {
        let weeks = (snapshot - o.start) as f64 / (7 * DAY) as f64;
        for a in &accounts {
            ids.push(a.id.clone());
            countries.push(a.country);
            registered.push(a.registered);
            // About 1% of snapshots miss the reject count, as real pipelines do.
            let reject = if rng.random_bool(0.01) {
                None
            } else if a.fraudster {
                Some(f64::from(rng.random_range(1..6)))
            } else {
                Some(if rng.random_bool(0.08) { 1.0 } else { 0.0 })
            };
            rejects.push(reject);
            ages.push(round2((a.age_days + weeks * 7.0).max(0.0)));
            stamps.push(snapshot);
        }
        snapshot += i64::from(o.account_snapshot_days.max(1)) * DAY;
    }
    let account_snapshots = ids.len();
    let acct = batch(
        &acct_schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(countries)),
            Arc::new(BooleanArray::from(registered)),
            Arc::new(Float64Array::from(rejects)),
            Arc::new(Float64Array::from(ages)),
            Arc::new(TimestampMicrosecondArray::from(stamps)),
        ],
    )?;
    write_parquet(&root.join("accounts").join("part-00000.parquet"), &acct)?;

    // Observations: the transactions themselves, after a week of history; the last two weeks
    // are the batch-inference period and carry no label.
    let inference_start = o.start + span - 14 * DAY;
    let history_end = o.start + 7 * DAY;
    let obs_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("transactionID", DataType::Utf8, false),
        Field::new("accountID", DataType::Utf8, false),
        Field::new("transactionAmount", DataType::Float64, false),
        Field::new("timestamp", ts_type.clone(), false),
        Field::new("is_fraud", DataType::Int64, false),
    ]));
    let obs = |rows: Vec<&Txn>, label: bool| -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| t.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| accounts[t.account].id.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|t| t.amount),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|t| t.ts),
            )),
        ];
        if label {
            cols.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| i64::from(t.fraud)),
            )));
            batch(&obs_schema, cols)
        } else {
            batch(
                &Arc::new(obs_schema.project(&[0, 1, 2, 3]).expect("valid projection")),
                cols,
            )
        }
    };
    let train: Vec<&Txn> = txns
        .iter()
        .filter(|t| t.ts >= history_end && t.ts < inference_start)
        .collect();
    let inference: Vec<&Txn> = txns.iter().filter(|t| t.ts >= inference_start).collect();
    let (train_rows, batch_inference_rows) = (train.len(), inference.len());
    write_parquet(
        &root.join("observations/train/part-00000.parquet"),
        &obs(train, true)?,
    )?;
    write_parquet(
        &root.join("observations/batch_inference/part-00000.parquet"),
        &obs(inference, false)?,
    )?;

    let fraud_rate = txns.iter().filter(|t| t.fraud).count() as f64 / txns.len() as f64;
    Ok(SampleDataSummary {
        root: root.to_path_buf(),
        transactions: txns.len(),
        account_snapshots,
        train_rows,
        batch_inference_rows,
        fraud_rate,
        inference_start,
    })
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| JobsError::InvalidInput(format!("internal error building sample data: {e}")))
}

/// Writes one batch to a parquet file.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| JobsError::io("cannot create folder", dir, e))?;
    }
    let file = File::create(path).map_err(|e| JobsError::io("cannot create", path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let context = || format!("cannot write {}", path.display());
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|source| {
        JobsError::Parquet {
            context: context(),
            source,
        }
    })?;
    writer.write(batch).map_err(|source| JobsError::Parquet {
        context: context(),
        source,
    })?;
    writer.close().map_err(|source| JobsError::Parquet {
        context: context(),
        source,
    })?;
    Ok(())
}
