//! The cluster: `almanac-scheduler` and `almanac-executor` started as separate processes on
//! loopback, driven by the CLI's `--scheduler` mode and the job API. Executors are killed,
//! added and drained mid-job, the scheduler is killed and restarted, and the results are
//! compared with the embedded engine's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use almanac_jobs::offline::table_url;
use almanac_jobs::registry::{FeatureSetRef, Registry};
use almanac_proto::v1 as api;
use almanac_proto::v1::job_service_client::JobServiceClient;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

use crate::common::{Output, failed, ok, run_cli};

pub(crate) const SCHEDULER: &str = env!("CARGO_BIN_EXE_it-almanac-scheduler");
const EXECUTOR: &str = env!("CARGO_BIN_EXE_it-almanac-executor");

/// Logs of the services: Almanac's, and Ballista's executor noting each task it receives.
const LOG_FILTER: &str = "warn,almanac=info,ballista_executor::execution_loop=info";

/// A free loopback port below the ephemeral range (32768 and up on Linux): a port the OS
/// hands out itself can be taken by an outgoing connection before the service binds it.
pub(crate) fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A service process; killed when dropped.
pub(crate) struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    pub(crate) fn spawn(name: &str, exe: &str, args: &[String], log: PathBuf) -> Service {
        Service::spawn_with_env(name, exe, args, log, &[])
    }

    /// [`Service::spawn`] with more environment variables.
    pub(crate) fn spawn_with_env(
        name: &str,
        exe: &str,
        args: &[String],
        log: PathBuf,
        env: &[(String, String)],
    ) -> Service {
        let file = std::fs::File::create(&log).unwrap();
        // In the log's folder: another test may have changed this process's folder and
        // removed it, and a child started there fails (Node.js programs do at once).
        let child = Command::new(exe)
            .args(args)
            .current_dir(log.parent().expect("a log file has a folder"))
            .env("RUST_LOG", LOG_FILTER)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        Service {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {} failed", self.name);
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scheduler and its executors over one store.
pub(crate) struct Cluster {
    dir: PathBuf,
    home: PathBuf,
    api_port: u16,
    executor_port: u16,
    pub(crate) http_port: u16,
    scheduler_args: Vec<String>,
    pub(crate) scheduler: Option<Service>,
    executors: Vec<Service>,
    starts: usize,
    /// Environment of every service started (object-store endpoints and credentials).
    pub(crate) env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a scheduler over `home` with `extra` flags. It triggers no schedule (the example
    /// set's daily one would fire at midnight): see [`Cluster::start_scheduling`].
    pub(crate) fn start(dir: &Path, home: &Path, extra: &[&str]) -> Cluster {
        let mut flags = vec!["--no-schedules"];
        flags.extend_from_slice(extra);
        Cluster::start_scheduling(dir, home, &flags)
    }

    /// Starts a scheduler over `home` with `extra` flags, schedules on.
    pub(crate) fn start_scheduling(dir: &Path, home: &Path, extra: &[&str]) -> Cluster {
        Cluster::start_with_env(dir, home, extra, &[])
    }

    /// Starts a scheduler whose services (it and its executors) get `env` too.
    pub(crate) fn start_with_env(
        dir: &Path,
        home: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Cluster {
        std::fs::create_dir_all(dir).unwrap();
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            home: home.to_path_buf(),
            api_port: free_port(),
            executor_port: free_port(),
            http_port: free_port(),
            scheduler_args: extra.iter().map(|s| s.to_string()).collect(),
            scheduler: None,
            executors: Vec::new(),
            starts: 0,
            env: env.to_vec(),
        };
        cluster.start_scheduler();
        cluster
    }

    pub(crate) fn api(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    pub(crate) fn start_scheduler(&mut self) {
        self.starts += 1;
        let mut args: Vec<String> = vec![
            "--home".into(),
            self.home.display().to_string(),
            "--bind".into(),
            self.api(),
            "--executor-bind".into(),
            format!("127.0.0.1:{}", self.executor_port),
            "--http-bind".into(),
            format!("127.0.0.1:{}", self.http_port),
            "--executor-timeout-secs".into(),
            "10".into(),
            "--retry-backoff-ms".into(),
            "200".into(),
            "--max-attempts".into(),
            "5".into(),
        ];
        args.extend(self.scheduler_args.iter().cloned());
        let log = self.dir.join(format!("scheduler-{}.log", self.starts));
        self.scheduler = Some(Service::spawn_with_env(
            "scheduler",
            SCHEDULER,
            &args,
            log,
            &self.env,
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.api()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the scheduler did not start:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts an executor; returns its index. `extra`: more flags.
    pub(crate) fn add_executor(&mut self, slots: usize, extra: &[&str]) -> usize {
        let n = self.executors.len();
        let mut args: Vec<String> = vec![
            "--scheduler".into(),
            format!("127.0.0.1:{}", self.executor_port),
            "--slots".into(),
            slots.to_string(),
            "--bind-host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            free_port().to_string(),
            "--grpc-port".into(),
            free_port().to_string(),
            "--http-bind".into(),
            format!("127.0.0.1:{}", free_port()),
            "--work-dir".into(),
            self.dir.join(format!("executor-{n}")).display().to_string(),
            "--memory-limit".into(),
            "512MiB".into(),
        ];
        if extra.contains(&"--port") {
            let at = args.iter().position(|a| a == "--port").unwrap();
            args.drain(at..at + 2);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.join(format!("executor-{n}.log"));
        self.executors.push(Service::spawn_with_env(
            &format!("executor {n}"),
            EXECUTOR,
            &args,
            log,
            &self.env,
        ));
        n
    }

    fn client<T>(
        &self,
        call: impl AsyncFnOnce(&mut JobServiceClient<tonic::transport::Channel>) -> T,
    ) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut client = JobServiceClient::connect(format!("http://{}", self.api()))
                .await
                .unwrap();
            call(&mut client).await
        })
    }

    /// SIGKILLs every executor.
    pub(crate) fn kill_executors(&mut self) {
        for e in &mut self.executors {
            e.kill();
        }
    }

    pub(crate) fn status(&self) -> api::ClusterStatusResponse {
        self.client(async |c| {
            c.cluster_status(api::ClusterStatusRequest {})
                .await
                .unwrap()
                .into_inner()
        })
    }

    pub(crate) fn job(&self, id: &str) -> api::Job {
        let id = id.to_string();
        self.client(async move |c| {
            c.get_job(api::GetJobRequest { job_id: id })
                .await
                .unwrap()
                .into_inner()
        })
    }

    pub(crate) fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Cluster) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn wait_active(&self, n: usize) {
        self.wait_for(
            &format!("{n} active executor(s)"),
            Duration::from_secs(60),
            |c| {
                c.status()
                    .executors
                    .iter()
                    .filter(|e| e.status == "active")
                    .count()
                    >= n
            },
        );
    }

    fn wait_tasks_done(&self, job: &str, n: u32) {
        self.wait_for(
            &format!("{n} task(s) of {job}"),
            Duration::from_secs(120),
            |c| c.job(job).tasks_done >= n,
        );
    }

    pub(crate) fn wait_end(&self, job: &str) -> api::Job {
        let mut ended = None;
        self.wait_for(
            &format!("job {job} to end"),
            Duration::from_secs(300),
            |c| {
                let j = c.job(job);
                let done = ["succeeded", "failed", "cancelled"].contains(&j.state.as_str());
                if done {
                    ended = Some(j);
                }
                done
            },
        );
        ended.unwrap()
    }

    /// `almanac --scheduler API ARGS`.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let api = self.api();
        let mut all = vec!["--scheduler", api.as_str()];
        all.extend_from_slice(args);
        run_cli(&all)
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for s in self.scheduler.iter().chain(&self.executors) {
            let log = s.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} ---\n", s.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A store over the example transactions set and sample data under `root`, registered in
/// each of `homes`.
pub(crate) fn example_store(root: &Path, days: u32, homes: &[&Path]) {
    example_store_from(root, "2023-01-01", days, 1500, homes);
}

/// [`example_store`] with data from `start` (a UTC date) and `transactions` rows.
pub(crate) fn example_store_from(
    root: &Path,
    start: &str,
    days: u32,
    transactions: usize,
    homes: &[&Path],
) {
    let data = root.join("data");
    ok(&run_cli(&[
        "sample-data",
        "--out",
        data.to_str().unwrap(),
        "--accounts",
        "30",
        "--transactions",
        &transactions.to_string(),
        "--days",
        &days.to_string(),
        "--start",
        start,
    ]));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud");
    let asset = crate::cli::example_set("transactions", root);
    let entity = examples.join("entities/account.yaml");
    for home in homes {
        let home = home.to_str().unwrap();
        ok(&run_cli(&[
            "--home",
            home,
            "entity",
            "create",
            "--file",
            entity.to_str().unwrap(),
        ]));
        ok(&run_cli(&[
            "--home",
            home,
            "featureset",
            "create",
            "--file",
            asset.to_str().unwrap(),
        ]));
    }
}

/// The result of `sql` over the example transactions set's offline table, registered as `t`
/// and read by delta-rs' own DataFusion provider.
pub(crate) fn offline_query(home: &Path, sql: &str) -> Vec<RecordBatch> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let root = Registry::open(home).unwrap().offline_root().unwrap();
        let r = FeatureSetRef::new("transactions", "1");
        let table = deltalake::open_table(table_url(&root, &r).unwrap())
            .await
            .unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    })
}

/// The offline table's rows (all columns but the write time), sorted, as text.
fn offline_rows(home: &Path) -> String {
    let batches = offline_query(
        home,
        "SELECT * EXCLUDE (create_timestamp) FROM t ORDER BY \"accountID\", \"timestamp\"",
    );
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The first rows that differ, if any.
fn assert_same_rows(got: &str, want: &str, cluster: &Cluster) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let diffs: Vec<String> = g
        .iter()
        .zip(&w)
        .filter(|(a, b)| a != b)
        .take(3)
        .map(|(a, b)| format!("got  {a}\nwant {b}"))
        .collect();
    assert!(
        diffs.is_empty() && g.len() == w.len(),
        "{} vs {} lines; first differences:\n{}\nscheduler warnings:\n{}",
        g.len(),
        w.len(),
        diffs.join("\n"),
        cluster
            .scheduler
            .as_ref()
            .map(|s| s
                .log()
                .lines()
                .filter(|l| l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n"))
            .unwrap_or_default()
    );
}

/// How many times each of a job's task transaction ids was committed to the table's log.
pub(crate) fn committed_task_ids(home: &Path, job: &str) -> HashMap<String, usize> {
    let root = Registry::open(home).unwrap().offline_root().unwrap();
    let table = table_url(&root, &FeatureSetRef::new("transactions", "1")).unwrap();
    let log = table.to_file_path().unwrap().join("_delta_log");
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(app) = action["txn"]["appId"].as_str()
                    && app.starts_with(&format!("almanac:{job}:"))
                {
                    *counts.entry(app.to_string()).or_default() += 1;
                }
            }
        }
    }
    counts
}

/// Every file of a retrieval output, by relative path.
pub(crate) fn output_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in ["", "data"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let name = format!("{sub}/{}", path.file_name().unwrap().to_string_lossy());
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// `almanac retrieve` of two example features for `observations`, written to `output`.
pub(crate) fn retrieve_args(observations: &str, output: &Path) -> Vec<String> {
    vec![
        "retrieve".to_string(),
        "--features".into(),
        "transactions:1:transaction_7d_count,transactions:1:transaction_amount_3d_avg".into(),
        "--observations".into(),
        observations.to_string(),
        "--timestamp-column".into(),
        "timestamp".into(),
        "--output".into(),
        output.display().to_string(),
        "--rows-per-file".into(),
        "100".into(),
    ]
}

pub(crate) fn job_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("backfill-") || w.starts_with("retrieval-"))
        .unwrap_or_else(|| panic!("no job id in:\n{stdout}"))
        .trim_end_matches(':')
        .to_string()
}

const START: &str = "2023-01-01";
const END: &str = "2023-01-21";

#[test]
fn a_cluster_gives_the_embedded_results_while_executors_die_join_and_drain() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (embedded, clustered) = (root.join("embedded"), root.join("clustered"));
    example_store(root, 20, &[&embedded, &clustered]);

    // The reference: the embedded engine.
    let home = embedded.to_str().unwrap();
    let t = Instant::now();
    ok(&run_cli(&[
        "--home",
        home,
        "backfill",
        "transactions:1",
        "--start",
        START,
        "--end",
        END,
    ]));
    eprintln!("embedded backfill: {:.1}s", t.elapsed().as_secs_f64());
    let reference = offline_rows(&embedded);
    assert!(reference.lines().count() > 1000, "{reference}");

    let mut cluster = Cluster::start(&root.join("cluster"), &clustered, &[]);
    cluster.add_executor(2, &[]);
    cluster.add_executor(2, &[]);
    cluster.wait_active(2);
    let t = Instant::now();
    let out = ok(&cluster.cli(&[
        "backfill",
        "transactions:1",
        "--start",
        START,
        "--end",
        END,
        "--wait",
    ]));
    eprintln!(
        "cluster backfill, 2 executors: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("succeeded") && out.contains("tasks 20/20"),
        "{out}"
    );
    assert_same_rows(&offline_rows(&clustered), &reference, &cluster);
    for (i, e) in cluster.executors.iter().enumerate() {
        assert!(
            e.log().contains("Received task"),
            "executor {i} ran no task:\n{}",
            cluster.logs()
        );
    }

    // The same backfill again while one executor is killed, one joins and one drains.
    let out = ok(&cluster.cli(&[
        "backfill",
        "transactions:1",
        "--start",
        START,
        "--end",
        END,
        "--data-status",
        "Complete",
    ]));
    let job = job_id(&out);
    cluster.wait_tasks_done(&job, 2);
    cluster.executors[0].signal("KILL");
    let joined = cluster.add_executor(2, &[]);
    cluster.wait_tasks_done(&job, 8);
    cluster.executors[1].signal("TERM");
    let ended = cluster.wait_end(&job);
    assert_eq!(ended.state, "succeeded", "{ended:?}\n{}", cluster.logs());
    assert_eq!(ended.tasks_done, 20);
    let drained = cluster.executors[1].wait_exit(Duration::from_secs(60));
    assert!(
        drained.is_some_and(|s| s.success()),
        "the drained executor did not exit cleanly: {drained:?}\n{}",
        cluster.logs()
    );
    assert!(
        cluster.executors[joined].log().contains("Received task"),
        "the executor started mid-job got no task:\n{}",
        cluster.logs()
    );
    assert_same_rows(&offline_rows(&clustered), &reference, &cluster);
    let commits = committed_task_ids(&clustered, &job);
    assert_eq!(commits.len(), 20, "{commits:?}");
    assert!(commits.values().all(|n| *n == 1), "{commits:?}");

    // Retrieval: the same bytes as the embedded run.
    let observations = root.join("data/observations/batch_inference");
    let retrieve = |output: &Path| retrieve_args(&observations.display().to_string(), output);
    let mut args = vec!["--home".to_string(), home.to_string()];
    args.extend(retrieve(&root.join("embedded-out")));
    ok(&run_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let args = retrieve(&root.join("cluster-out"));
    let out = ok(&cluster.cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(out.contains("retrieved"), "{out}");
    let (a, b) = (
        output_files(&root.join("embedded-out")),
        output_files(&root.join("cluster-out")),
    );
    assert!(
        a.len() > 2,
        "{:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    // The written spec names the store it read from; each run has its own.
    let spec = |files: &[(String, Vec<u8>)], home: &Path| {
        String::from_utf8(files[0].1.clone())
            .unwrap()
            .replace(&home.display().to_string(), "HOME")
    };
    assert_eq!(a[0].0, "/feature_retrieval_spec.yaml");
    assert_eq!(spec(&a, &embedded), spec(&b, &clustered));
    assert!(
        a[1..] == b[1..],
        "the cluster's retrieval differs from the embedded one"
    );

    let status = ok(&cluster.cli(&["cluster", "status"]));
    assert!(status.contains("active executor(s)"), "{status}");
    let metrics = http_get(cluster.http_port, "/metrics");
    assert!(
        metrics.contains("almanac_jobs{state=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("almanac_task_duration_seconds_count"),
        "{metrics}"
    );
    assert!(http_get(cluster.http_port, "/healthz").contains("ok"));
    assert!(http_get(cluster.http_port, "/readyz").contains("ready"));
}

/// The body of `GET path` on loopback.
pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_scheduler_killed_mid_job_finishes_it_exactly_once_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 20, &[&home]);
    let mut cluster = Cluster::start(&root.join("cluster"), &home, &["--parallel-tasks", "1"]);
    cluster.add_executor(2, &[]);
    cluster.wait_active(1);
    let out = ok(&cluster.cli(&["backfill", "transactions:1", "--start", START, "--end", END]));
    let job = job_id(&out);
    cluster.wait_tasks_done(&job, 3);
    cluster.scheduler.as_mut().unwrap().kill();
    cluster.start_scheduler();
    let ended = cluster.wait_end(&job);
    assert_eq!(ended.state, "succeeded", "{ended:?}\n{}", cluster.logs());
    let commits = committed_task_ids(&home, &job);
    assert_eq!(commits.len(), 20, "{commits:?}");
    assert!(
        commits.values().all(|n| *n == 1),
        "a task committed twice: {commits:?}"
    );
    // No row twice.
    let rows = offline_rows(&home);
    let mut keys: Vec<&str> = rows
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .collect();
    let all = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), all);
    assert!(
        cluster
            .scheduler
            .as_ref()
            .unwrap()
            .log()
            .contains("resuming")
            || ended.tasks.iter().all(|t| t.attempts >= 1),
        "{}",
        cluster.logs()
    );
}

#[test]
fn a_cancelled_job_stops_and_commits_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 20, &[&home]);
    let mut cluster = Cluster::start(&root.join("cluster"), &home, &["--parallel-tasks", "1"]);
    cluster.add_executor(1, &[]);
    cluster.wait_active(1);
    let out = ok(&cluster.cli(&["backfill", "transactions:1", "--start", START, "--end", END]));
    let job = job_id(&out);
    cluster.wait_tasks_done(&job, 2);
    let out = ok(&cluster.cli(&["job", "cancel", &job]));
    assert!(out.contains("cancelled"), "{out}");
    let cancelled = cluster.job(&job);
    assert_eq!(cancelled.state, "cancelled");
    // Its queries are stopped on the cluster, not left to finish.
    cluster.wait_for("no query running", Duration::from_secs(5), |c| {
        c.status().running_queries == 0
    });
    let committed = committed_task_ids(&home, &job).len();
    assert!(committed < 20, "{committed}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        committed_task_ids(&home, &job).len(),
        committed,
        "a task committed after the cancel"
    );
    let succeeded = cancelled
        .tasks
        .iter()
        .filter(|t| t.state == "succeeded")
        .count();
    assert_eq!(succeeded, committed);
    assert!(
        cancelled
            .tasks
            .iter()
            .all(|t| t.state == "succeeded" || t.state == "cancelled"),
        "{cancelled:?}"
    );
    // The cancelled windows are not left Pending: a later backfill takes them.
    let status = ok(&run_cli(&[
        "--home",
        home.to_str().unwrap(),
        "featureset",
        "status",
        "transactions:1",
    ]));
    assert!(
        !status.contains("Pending") && status.contains("Incomplete"),
        "{status}"
    );
    // Cancelling an ended job changes nothing.
    let again = ok(&cluster.cli(&["job", "cancel", &job]));
    assert!(again.contains("cancelled"), "{again}");
}

#[test]
fn fifty_jobs_at_once_all_finish_within_the_running_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 60, &[&home]);
    let mut cluster = Cluster::start(
        &root.join("cluster"),
        &home,
        &["--max-running-jobs", "3", "--parallel-tasks", "1"],
    );
    cluster.add_executor(2, &[]);
    cluster.wait_active(1);
    let start = chrono::NaiveDate::from_ymd_opt(2023, 1, 3).unwrap();
    let api = cluster.api();
    std::thread::scope(|s| {
        for t in 0..10 {
            let api = api.clone();
            s.spawn(move || {
                for i in 0..5 {
                    let day = start + chrono::Days::new(t * 5 + i);
                    let next = day + chrono::Days::new(1);
                    let (day, next) = (day.to_string(), next.to_string());
                    ok(&run_cli(&[
                        "--scheduler",
                        &api,
                        "backfill",
                        "transactions:1",
                        "--start",
                        &day,
                        "--end",
                        &next,
                    ]));
                }
            });
        }
    });
    let list = || {
        cluster.client(async |c| {
            c.list_jobs(api::ListJobsRequest {
                feature_set: String::new(),
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .jobs
        })
    };
    assert_eq!(list().len(), 50);
    cluster.wait_for("50 jobs to end", Duration::from_secs(600), |_| {
        list()
            .iter()
            .all(|j| j.state != "queued" && j.state != "running")
    });
    let jobs = list();
    assert!(jobs.iter().all(|j| j.state == "succeeded"), "{jobs:?}");
    // At no instant were more than 3 running.
    let mut edges: Vec<(String, i32)> = Vec::new();
    for j in &jobs {
        edges.push((j.started_at.clone().unwrap(), 1));
        edges.push((j.finished_at.clone().unwrap(), -1));
    }
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, d) in edges {
        running += d;
        most = most.max(running);
    }
    assert!((1..=3).contains(&most), "{most} jobs ran at once");
}

#[test]
fn bad_cluster_input_fails_clearly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 20, &[&home]);
    let mut cluster = Cluster::start(&root.join("cluster"), &home, &[]);

    let err = failed(&cluster.cli(&["backfill", "nope:1", "--start", START, "--end", END]));
    assert!(err.contains("unknown feature set nope:1"), "{err}");
    let err = failed(&cluster.cli(&[
        "retrieve",
        "--features",
        "nope:1:x",
        "--observations",
        root.join("data/observations/train").to_str().unwrap(),
        "--timestamp-column",
        "timestamp",
        "--output",
        root.join("never").to_str().unwrap(),
    ]));
    assert!(err.contains("nope:1"), "{err}");
    assert!(!root.join("never").exists());

    // Malformed requests straight to the API.
    let refused = cluster.client(async |c| {
        let mut messages = Vec::new();
        let bad = c
            .submit_backfill(api::SubmitBackfillRequest {
                feature_set: "no-version".into(),
                start_us: 0,
                end_us: 86_400_000_000,
                data_statuses: vec![],
                partition_us: 0,
            })
            .await
            .unwrap_err();
        messages.push((bad.code(), bad.message().to_string()));
        let bad = c
            .submit_backfill(api::SubmitBackfillRequest {
                feature_set: "transactions:1".into(),
                start_us: 0,
                end_us: 86_400_000_000,
                data_statuses: vec!["Sometimes".into()],
                partition_us: 0,
            })
            .await
            .unwrap_err();
        messages.push((bad.code(), bad.message().to_string()));
        let bad = c
            .submit_retrieval(api::SubmitRetrievalRequest {
                features: vec!["transactions:1".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        messages.push((bad.code(), bad.message().to_string()));
        let bad = c
            .get_job(api::GetJobRequest {
                job_id: "backfill-nope".into(),
            })
            .await
            .unwrap_err();
        messages.push((bad.code(), bad.message().to_string()));
        messages
    });
    assert_eq!(refused[0].0, tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused[0].1.contains("no-version"), "{refused:?}");
    assert!(refused[1].1.contains("Sometimes"), "{refused:?}");
    assert_eq!(refused[2].0, tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused[3].0, tonic::Code::NotFound, "{refused:?}");
    assert!(ok(&cluster.cli(&["job", "list"])).contains("no jobs"));

    // An executor of another Almanac version is refused and exits.
    let other = cluster.add_executor(1, &["--pretend-version", "9.9.9"]);
    let exited = cluster.executors[other].wait_exit(Duration::from_secs(60));
    assert!(
        exited.is_some_and(|s| !s.success()),
        "{exited:?}\n{}",
        cluster.logs()
    );
    let log = cluster.executors[other].log();
    assert!(
        log.contains("runs Almanac 0.1.0, the executor Almanac 9.9.9"),
        "{log}"
    );
    assert!(cluster.status().executors.is_empty());

    // An executor that cannot listen for shuffle reads says so and exits.
    let busy = cluster.api_port.to_string();
    let blocked = cluster.add_executor(1, &["--port", &busy]);
    let exited = cluster.executors[blocked].wait_exit(Duration::from_secs(30));
    assert!(exited.is_some_and(|s| !s.success()), "{exited:?}");
    let log = cluster.executors[blocked].log();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{busy}")),
        "{log}"
    );

    // A scheduler that does not answer: said so within seconds.
    let t = Instant::now();
    let dead = format!("127.0.0.1:{}", free_port());
    let err = failed(&run_cli(&["--scheduler", &dead, "job", "list"]));
    assert!(err.contains("does not answer"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(6));
    cluster.scheduler.as_mut().unwrap().kill();
    let err = failed(&cluster.cli(&["cluster", "status"]));
    assert!(err.contains("does not answer"), "{err}");
}

#[test]
fn registry_reads_through_the_scheduler_show_what_the_store_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 20, &[&home]);
    let h = home.to_str().unwrap();
    ok(&run_cli(&[
        "--home",
        h,
        "backfill",
        "transactions:1",
        "--start",
        START,
        "--end",
        "2023-01-03",
    ]));
    let mut cluster = Cluster::start(&root.join("cluster"), &home, &[]);
    for command in [
        vec!["entity", "list"],
        vec!["entity", "show", "account:1"],
        vec!["featureset", "list"],
        vec!["featureset", "show", "transactions:1"],
        vec!["featureset", "status", "transactions:1"],
        vec!["featureset", "models", "transactions:1"],
        vec!["feature", "list", "--featureset", "transactions:1"],
        vec!["feature", "list", "--search", "7d", "--tag", "team=fraud"],
        vec!["model", "list"],
    ] {
        let mut embedded = vec!["--home", h];
        embedded.extend(&command);
        let want = ok(&run_cli(&embedded));
        let got = ok(&cluster.cli(&command));
        assert_eq!(got, want, "almanac {}", command.join(" "));
        assert!(!got.is_empty());
    }
    let status = ok(&cluster.cli(&["featureset", "status", "transactions:1"]));
    assert!(
        status.contains("[2023-01-01T00:00:00Z, 2023-01-03T00:00:00Z) Complete"),
        "{status}"
    );
    for (command, expected) in [
        (
            vec!["featureset", "show", "nope:1"],
            "unknown feature set nope:1",
        ),
        (vec!["entity", "show", "nope:1"], "unknown entity nope:1"),
        (vec!["model", "show", "nope:1"], "unknown model nope:1"),
        (
            vec!["feature", "list", "--tag", "team"],
            "'team' is not key=value",
        ),
        (
            vec!["featureset", "archive", "nope:1"],
            "unknown feature set nope:1",
        ),
        (
            vec![
                "featureset",
                "sample",
                "transactions:1",
                "--start",
                START,
                "--end",
                END,
            ],
            "not part of the job API yet",
        ),
    ] {
        let err = failed(&cluster.cli(&command));
        assert!(
            err.contains(expected),
            "almanac {}: {err}",
            command.join(" ")
        );
    }

    // Registering and archiving through the scheduler; the store sees it.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud");
    let entity = examples.join("entities/account.yaml");
    let again = ok(&cluster.cli(&["entity", "create", "--file", entity.to_str().unwrap()]));
    assert!(
        again.contains("already registered with this content"),
        "{again}"
    );
    let asset = crate::cli::example_set("accounts", root);
    let created = ok(&cluster.cli(&["featureset", "create", "--file", asset.to_str().unwrap()]));
    assert!(
        created.contains("registered feature set accounts:1"),
        "{created}"
    );
    let archived = ok(&cluster.cli(&["featureset", "archive", "accounts:1"]));
    assert!(
        archived.contains("accounts:1 is now Archived"),
        "{archived}"
    );
    let listed = ok(&run_cli(&["--home", h, "featureset", "list"]));
    assert!(listed.contains("accounts:1  Archived"), "{listed}");
    ok(&cluster.cli(&["featureset", "restore", "accounts:1"]));

    // A model registered through the scheduler: lineage both ways.
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("feature_retrieval_spec.yaml"),
        format!(
            "serialization_version: 2\nfeature_stores:\n- uri: file://{}\n  features:\n  - feature_set: transactions:1\n    feature_name: transaction_7d_count\n",
            home.display()
        ),
    )
    .unwrap();
    let registered = ok(&cluster.cli(&[
        "model",
        "register",
        "--name",
        "m",
        "--version",
        "1",
        "--path",
        model.to_str().unwrap(),
    ]));
    assert!(
        registered.contains("uses feature sets: transactions:1"),
        "{registered}"
    );
    let lineage = ok(&cluster.cli(&["featureset", "models", "transactions:1"]));
    assert!(lineage.contains("m:1"), "{lineage}");
    let shown = ok(&cluster.cli(&["model", "show", "m:1"]));
    assert!(shown.contains("  transactions:1"), "{shown}");

    // A retrieval spec made by the scheduler's registry, written here: as embedded.
    let spec_args = |dir: &Path| {
        vec![
            "retrieval-spec".to_string(),
            "create".into(),
            "--features".into(),
            "transactions:1:transaction_7d_count=n7,transactions:1:transaction_3d_count".into(),
            "--out".into(),
            dir.display().to_string(),
        ]
    };
    let args = spec_args(&root.join("remote-spec"));
    ok(&cluster.cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut args = vec!["--home".to_string(), h.to_string()];
    args.extend(spec_args(&root.join("local-spec")));
    ok(&run_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(
        std::fs::read_to_string(root.join("remote-spec/feature_retrieval_spec.yaml")).unwrap(),
        std::fs::read_to_string(root.join("local-spec/feature_retrieval_spec.yaml")).unwrap()
    );
    let args = spec_args(&root.join("remote-spec"));
    let err = failed(&cluster.cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(err.contains("pass --force"), "{err}");

    // Batch inference with the model's packaged features, on the cluster and embedded.
    cluster.add_executor(2, &[]);
    cluster.wait_active(1);
    let observations = root.join("data/observations/batch_inference");
    let inference = |out: &Path| {
        vec![
            "retrieve".to_string(),
            "--model".into(),
            "m:1".into(),
            "--observations".into(),
            observations.display().to_string(),
            "--timestamp-column".into(),
            "timestamp".into(),
            "--output".into(),
            out.display().to_string(),
        ]
    };
    let args = inference(&root.join("remote-inference"));
    ok(&cluster.cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut args = vec!["--home".to_string(), h.to_string()];
    args.extend(inference(&root.join("local-inference")));
    ok(&run_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let (a, b) = (
        output_files(&root.join("remote-inference")),
        output_files(&root.join("local-inference")),
    );
    assert!(
        a.len() > 1 && a == b,
        "inference through the scheduler differs"
    );
}

#[test]
fn services_start_from_a_config_file_and_refuse_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (api, executors, http, executor_http) =
        (free_port(), free_port(), free_port(), free_port());
    let scheduler_config = root.join("scheduler.yaml");
    std::fs::write(
        &scheduler_config,
        format!(
            "# Every key is a flag of almanac-scheduler.\nhome: {}\nbind: 127.0.0.1:{api}\n\
             executor-bind: 127.0.0.1:{executors}\nhttp_bind: 127.0.0.1:{http}\n\
             max_running_jobs: 2\nno_schedules: true\n",
            root.join("store").display()
        ),
    )
    .unwrap();
    let config_flag = |file: &Path| vec!["--config".to_string(), file.display().to_string()];
    let _scheduler = Service::spawn(
        "scheduler",
        SCHEDULER,
        &config_flag(&scheduler_config),
        root.join("scheduler.log"),
    );
    let executor_config = root.join("executor.yaml");
    std::fs::write(
        &executor_config,
        format!(
            "scheduler: 127.0.0.1:{executors}\nslots: 1\nwork_dir: {}\nbind_host: 127.0.0.1\n\
             port: {}\ngrpc_port: {}\nhttp_bind: 127.0.0.1:{executor_http}\n\
             memory_limit: 256MiB\n",
            root.join("work").display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let _executor = Service::spawn(
        "executor",
        EXECUTOR,
        &config_flag(&executor_config),
        root.join("executor.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_cli(&[
            "--scheduler",
            &format!("127.0.0.1:{api}"),
            "cluster",
            "status",
        ]);
        if out.success && out.stdout.contains("active") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the configured cluster did not come up: {}{}\n{}\n{}",
            out.stdout,
            out.stderr,
            std::fs::read_to_string(root.join("scheduler.log")).unwrap_or_default(),
            std::fs::read_to_string(root.join("executor.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(http_get(http, "/healthz").contains("ok"));
    assert!(http_get(executor_http, "/healthz").contains("ok"));
    // Ready once registered with the scheduler.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http_get(executor_http, "/readyz");
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(root.join("work").is_dir());

    // Bad configuration stops start-up, naming the file and what is wrong.
    for (yaml, expected) in [
        ("max_runing_jobs: 2\n", "unknown key 'max_runing_jobs'"),
        ("max_running_jobs: lots\n", "'lots'"),
        ("bind: [a, b]\n", "bind: expected a single value"),
    ] {
        let bad = root.join("bad.yaml");
        std::fs::write(&bad, yaml).unwrap();
        let out = Command::new(SCHEDULER)
            .args(["--config", bad.to_str().unwrap()])
            .current_dir(root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml} was accepted");
        assert!(
            stderr.contains(expected) && stderr.contains("bad.yaml"),
            "{yaml}: {stderr}"
        );
    }
}
