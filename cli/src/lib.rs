//! The `almanac` command-line tool, as a library so tests can drive it in-process.
//!
//! Without a cluster the CLI runs everything on an embedded Ballista engine.

mod commands;
mod error;
mod quickstart;
mod remote;
mod store;
mod view;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use error::CliError;

#[derive(Debug, Parser)]
#[command(
    name = "almanac",
    version,
    about = "Almanac: a feature store's batch engine",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub engine: EngineArgs,

    /// The feature store's home: its registry database, registered specs and offline store.
    #[arg(long, global = true, env = "ALMANAC_HOME", default_value = ".almanac")]
    pub home: PathBuf,

    /// Where the offline store's Delta tables go: a folder or object-store URL (s3://, az://,
    /// abfss://, gs://). Recorded in the store on first use (default: <home>/offline).
    #[arg(long, global = true, env = "ALMANAC_OFFLINE_ROOT")]
    pub offline_root: Option<String>,

    /// A scheduler's job API (HOST:PORT or http://HOST:PORT): jobs are submitted to that
    /// cluster instead of running in this process.
    #[arg(long, global = true, env = "ALMANAC_SCHEDULER")]
    pub scheduler: Option<String>,

    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "ALMANAC_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How the embedded engine is sized.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Task slots of the embedded executor (default: the machine's cores).
    #[arg(long, global = true, env = "ALMANAC_PARALLELISM")]
    pub parallelism: Option<usize>,

    /// Memory the engine may use before operators spill to disk, e.g. 2GiB (default: unbounded).
    #[arg(long, global = true, env = "ALMANAC_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate sample data and compute the example feature sets, end to end, embedded.
    Quickstart {
        /// Folder for the sample data and specs.
        #[arg(long, default_value = "almanac-quickstart")]
        dir: PathBuf,
        /// Number of transactions to generate.
        #[arg(long, default_value_t = 50_000)]
        transactions: usize,
    },
    /// Write deterministic, tutorial-shaped sample data (transactions, accounts, observations).
    SampleData(SampleDataArgs),
    /// Work with feature set specs locally.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Join features point-in-time onto observation rows and write them as parquet.
    Retrieve(RetrieveArgs),
    /// Registered entities.
    #[command(subcommand)]
    Entity(EntityCommand),
    /// Registered feature set versions.
    #[command(subcommand)]
    Featureset(FeaturesetCommand),
    /// Features of registered feature sets.
    #[command(subcommand)]
    Feature(FeatureCommand),
    /// Materialize a window of a registered feature set into the offline store.
    Backfill(BackfillArgs),
    /// Run the store's materialization schedules in this process until Ctrl-C or SIGTERM
    /// (embedded; a scheduler service runs them itself).
    Serve(ServeArgs),
    /// Jobs recorded in the store.
    #[command(subcommand)]
    Job(JobCommand),
    /// Copy the store's registry (a consistent snapshot, safe while a scheduler runs) and its
    /// registered spec and model files into a new folder. Runs where --home is.
    Backup {
        /// A new or empty folder.
        #[arg(long)]
        to: PathBuf,
    },
    /// The cluster behind --scheduler.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Feature retrieval specs: the feature list a model is trained with.
    #[command(subcommand)]
    RetrievalSpec(RetrievalSpecCommand),
    /// Registered models and the feature sets they use.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Pipeline step: train a classifier on retrieved training data into a model folder.
    Train {
        /// A `retrieve` output folder (data/ and feature_retrieval_spec.yaml).
        #[arg(long)]
        data: PathBuf,
        /// The 0/1 or boolean label column.
        #[arg(long)]
        label: String,
        #[arg(long)]
        timestamp_column: String,
        /// Fraction of the time range, at its end, held out for evaluation.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Model folder to write (model.json, metrics.json, feature_retrieval_spec.yaml).
        #[arg(long)]
        out: PathBuf,
    },
    /// Pipeline step: AUC on the held-out rows; fails below --min-auc.
    Evaluate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 0.7)]
        min_auc: f32,
    },
    /// Score retrieved rows with a model folder: the rows plus a `score` column, as parquet.
    Predict {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure Almanac on generated data (use a release build).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum EntityCommand {
    /// Register an entity from its yaml (name, version, index_columns, ...).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// List registered entities.
    List,
    /// Show one entity: name:version.
    Show { entity: String },
}

#[derive(Debug, Subcommand)]
pub enum FeaturesetCommand {
    /// Register a feature set version from its asset yaml; the spec is copied into the store.
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// List registered feature set versions.
    List,
    /// Show one version: name:version.
    Show { feature_set: String },
    /// Compute a registered set's features over a window and print or write them.
    Sample {
        feature_set: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Move a version to the Archived stage.
    Archive { feature_set: String },
    /// Move an archived version back to Development.
    Restore { feature_set: String },
    /// Data intervals (None / Pending / Incomplete / Complete) and recent jobs of a version.
    Status { feature_set: String },
    /// The registered models that use a version.
    Models { feature_set: String },
    /// Set or disable a version's materialization schedule. A scheduler (or `almanac serve`)
    /// triggers it; each trigger materializes the window since the previous one.
    Schedule(ScheduleArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["every", "cron", "disable"])))]
pub struct ScheduleArgs {
    /// name:version of a registered feature set with offline materialization.
    pub feature_set: String,
    /// A recurrence: a count and a unit, e.g. 15m, 1h, 1d, 1w, 1mo.
    #[arg(long)]
    pub every: Option<String>,
    /// Five cron fields (minute hour day-of-month month day-of-week), e.g. '30 2 * * *'.
    #[arg(long)]
    pub cron: Option<String>,
    /// With --every: the first trigger, local to the time zone (e.g. 2024-01-01T02:30:00);
    /// later ones follow from it. Default: midnight, 1970-01-01.
    #[arg(long, requires = "every")]
    pub start: Option<String>,
    /// An IANA time zone (e.g. Europe/Berlin); default UTC.
    #[arg(long, conflicts_with = "disable")]
    pub time_zone: Option<String>,
    /// Stop triggering (the schedule is kept; setting one again starts afresh).
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// name:version of a registered feature set with offline materialization.
    pub feature_set: Option<String>,
    /// Window start (included), on the partition grid (midnight UTC for 1d).
    #[arg(long)]
    pub start: Option<String>,
    /// Window end (excluded).
    #[arg(long)]
    pub end: Option<String>,
    /// Data statuses to materialize, comma-separated: None, Incomplete, Complete.
    #[arg(long, default_value = "None,Incomplete")]
    pub data_status: String,
    /// Task length: whole days.
    #[arg(long, default_value = "1d")]
    pub partition: String,
    /// Tasks running at once.
    #[arg(long, default_value_t = 2)]
    pub parallel_tasks: usize,
    /// Attempts per task: a task failing for a reason that may pass (engine, IO, storage) is
    /// retried with exponential backoff.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Wait before a task's second attempt (doubled for each later one), e.g. 500ms, 2s.
    #[arg(long, default_value = "1s")]
    pub retry_backoff: String,
    /// Instead of a window: rerun the unfinished tasks of this job.
    #[arg(long, conflicts_with_all = ["feature_set", "start", "end"])]
    pub job: Option<String>,
    /// Wait for the job to end. Embedded (no scheduler), the command always runs the job to
    /// its end, so this is what happens anyway; it is accepted so scripts work both ways.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Missed triggers run after downtime, counted back from now; older ones are skipped and
    /// listed.
    #[arg(long, default_value_t = 10)]
    pub catch_up_limit: usize,
    /// Scheduled jobs running at once (of different feature sets: one set's runs never overlap).
    #[arg(long, default_value_t = 2)]
    pub max_running_jobs: usize,
    /// Attempts per task.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Read the schedules' clock from this file (an RFC 3339 time) instead of the system clock.
    #[arg(long, hide = true)]
    pub clock_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RetrievalSpecCommand {
    /// Write DIR/feature_retrieval_spec.yaml for registered features.
    Create {
        /// set:version:feature[=output_name], comma-separated; registered sets only.
        #[arg(long, value_delimiter = ',', required = true)]
        features: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing spec file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a model folder (its files are copied into the store); it must hold the
    /// feature_retrieval_spec.yaml it was trained with, at its root.
    // `--version` here is the model's; clap's own version flag is not offered on this command.
    #[command(disable_version_flag = true)]
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        path: PathBuf,
    },
    /// Registered models and the feature sets they use.
    List,
    /// One model: name:version.
    Show { model: String },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Recent jobs, newest first.
    List {
        #[arg(long)]
        featureset: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One job with its tasks.
    Show { job: String },
    /// Follow a job to its end with a progress bar (tasks done/total, rows, elapsed, ETA).
    Watch { job: String },
    /// Stop a job: its running queries are cancelled and nothing more of it is committed.
    Cancel { job: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The scheduler's executors, slots and running work.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum FeatureCommand {
    /// List features, optionally of one set, matching text or carrying tags.
    List {
        /// Only this feature set version: name:version.
        #[arg(long)]
        featureset: Option<String>,
        /// Text in the feature's name or description (case-insensitive).
        #[arg(long)]
        search: Option<String>,
        /// key=value tag the feature's set carries; repeat for several (all must match).
        #[arg(long)]
        tag: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Features, backfill and retrieval, one after another on the same data: one report.
    All(BenchArgs),
    /// The transactions set's DSL over the whole period, by Almanac's window operator and by
    /// DataFusion window functions: source rows per second, time and peak memory of each.
    Features(BenchArgs),
    /// Materialize the transactions set into a new offline store, one task per day: rows and
    /// files written, rows per second, time and peak memory.
    Backfill(BenchArgs),
    /// Retrieve every tutorial feature onto generated observations: observation rows per
    /// second, time and peak memory.
    Retrieve(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Folder for the generated data (reused when the scale matches) and the outputs.
    #[arg(long, default_value = "almanac-bench")]
    pub dir: PathBuf,
    /// Observation rows (retrieval).
    #[arg(long, default_value_t = 1_000_000)]
    pub observations: usize,
    #[arg(long, default_value_t = 10_000_000)]
    pub transactions: usize,
    #[arg(long, default_value_t = 100_000)]
    pub accounts: usize,
    /// Days of transactions.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Skewed keys: this share of all transactions (e.g. 0.02) belongs to one account.
    #[arg(long, default_value_t = 0.0)]
    pub hot_key_share: f64,
    /// Zipf-skewed keys: the account of rank k has weight 1/k^S (e.g. 1.1; the busiest of
    /// 100k accounts then has about 13% of the rows).
    #[arg(long, value_name = "S")]
    pub zipf: Option<f64>,
    /// Print the report as one JSON object only.
    #[arg(long)]
    pub json: bool,
    /// Days each backfill task materializes (`almanac backfill --partition`); every task also
    /// reads the source lookback before its days, so longer tasks read less twice.
    #[arg(long, default_value_t = 1)]
    pub task_days: u32,
    /// Which plans the features phase measures: both (the comparison), or one of them.
    #[arg(long, value_enum, default_value_t = BenchPlans::Both)]
    pub plans: BenchPlans,
}

/// The feature plans `almanac bench features` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPlans {
    Both,
    /// Almanac's window operator only.
    Operator,
    /// DataFusion window functions only.
    WindowFunctions,
}

#[derive(Debug, Clone, Args)]
pub struct RetrieveArgs {
    /// Features to retrieve, as set:version:feature, each optionally renamed with =NAME;
    /// comma-separated, and the flag may be repeated.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Folder holding feature_retrieval_spec.yaml (or the file); its features come first.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Use the retrieval spec packaged with this registered model (name:version): batch
    /// inference with the features it was trained on.
    #[arg(long, conflicts_with = "spec")]
    pub model: Option<String>,
    /// Make the spec in DIR available as feature set NAME, version `local`: NAME=DIR. Repeatable.
    #[arg(long = "local", value_name = "NAME=DIR")]
    pub local: Vec<String>,
    /// Observation rows: a parquet or csv file, folder or glob (local path, file://, s3://, az://,
    /// abfss://, gs://).
    #[arg(long)]
    pub observations: String,
    /// Format of the observations (default: from the file extension, else parquet).
    #[arg(long, value_enum)]
    pub observations_format: Option<ObservationFormat>,
    /// The observations' time column: each row gets the feature values known at this time.
    #[arg(long)]
    pub timestamp_column: String,
    /// Format of a string or integer time column (e.g. '%Y-%m-%d %H:%M:%S', epoch_ms; default:
    /// ISO 8601 strings, integers as epoch seconds).
    #[arg(long)]
    pub timestamp_format: Option<String>,
    /// Output folder; gets data/part-*.parquet and feature_retrieval_spec.yaml.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace the output folder if it exists (only once the new result is complete).
    #[arg(long)]
    pub overwrite: bool,
    /// Rows per output file.
    #[arg(long, default_value_t = almanac_jobs::retrieve::DEFAULT_ROWS_PER_FILE)]
    pub rows_per_file: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ObservationFormat {
    Parquet,
    Csv,
}

#[derive(Debug, Args)]
pub struct SampleDataArgs {
    /// Folder to write into; gets transactions/, accounts/ and observations/{train,batch_inference}/.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    #[arg(long, default_value_t = 50_000)]
    pub transactions: usize,
    /// Days of data (at least 15).
    #[arg(long, default_value_t = 60)]
    pub days: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First day of data (UTC).
    #[arg(long, default_value = "2023-01-01")]
    pub start: String,
    /// Replace sample data already in the folder.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Create a spec for precomputed features from a source's schema.
    Init(InitArgs),
    /// Check a spec: its fields, its source, and that the transformation produces what it declares.
    Validate {
        /// Folder holding FeatureSetSpec.yaml (or the file).
        dir: PathBuf,
    },
    /// Compute a spec's features over a window and print them or write them to parquet.
    Sample(SampleArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Source file, folder or glob (local path, file://, s3://, az://, abfss://, gs://).
    #[arg(long)]
    pub source: String,
    /// Source format.
    #[arg(long = "type", value_enum, default_value = "parquet")]
    pub kind: SourceKindArg,
    /// Index (join key) column; repeat for several.
    #[arg(long = "index-column", required = true)]
    pub index_columns: Vec<String>,
    #[arg(long)]
    pub timestamp_column: String,
    /// Format of a string or integer timestamp column (e.g. '%Y-%m-%d %H:%M:%S', epoch_ms).
    #[arg(long)]
    pub timestamp_format: Option<String>,
    /// Source column to leave out; repeat for several.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// How late data lands in the source, e.g. 20m.
    #[arg(long)]
    pub source_delay: Option<String>,
    /// History a feature window reads before its start, e.g. 7d.
    #[arg(long)]
    pub source_lookback: Option<String>,
    /// How far back a point-in-time join looks for a value, e.g. 365d.
    #[arg(long)]
    pub temporal_join_lookback: Option<String>,
    /// Folder to write FeatureSetSpec.yaml into.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing spec.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceKindArg {
    Parquet,
    Csv,
    Delta,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Folder holding FeatureSetSpec.yaml (or the file).
    pub dir: PathBuf,
    /// Window start, included (UTC unless an offset is given), e.g. 2023-01-01.
    #[arg(long)]
    pub start: String,
    /// Window end, excluded.
    #[arg(long)]
    pub end: String,
    /// Rows to show or write (default when printing: 20; when writing: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the rows to this parquet file instead of printing them.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The `almanac` binary: parses flags, sets up logging and runs the command.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    almanac_jobs::logging::init(
        cli.log_format == LogFormat::Json,
        almanac_jobs::logging::DEFAULT_FILTER,
    );
    let mut stdout = std::io::stdout();
    almanac_jobs::logging::run_main(None, run(cli, &mut stdout))
}

/// Runs a parsed command line, writing user-facing output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    commands::run(cli, out).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the whole command tree (clashing names, bad defaults) only when a command
    /// is parsed; this checks every subcommand at once.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
