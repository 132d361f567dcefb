//! Sources and the offline store on object storage: an S3-compatible server (moto's, from
//! PyPI) and Azure's emulator (Azurite, from npm), both real servers on loopback, started by
//! the test. A scheduler and two executors backfill and retrieve with everything in the store;
//! the results equal an embedded run on local files. `.ci/run` installs both servers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use almanac_jobs::offline::{materialize_task, table_url};
use almanac_jobs::registry::FeatureSetRef;
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::LoadedSpec;
use almanac_tests::fixtures::{DAY, t};
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::{ObjectStore, ObjectStoreExt, PutMode};
use url::Url;

use crate::cluster::{Cluster, Service, example_store, free_port, output_files, retrieve_args};
use crate::common::{engine, ok, run_cli};
use crate::offline::example_transactions;

const BUCKET: &str = "almanac";
/// Azurite's well-known development account key (public, documented by Microsoft).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The S3 secret the test's services use; checked never to appear in a log.
const S3_SECRET: &str = "almanac-test-secret-8f3e2a";

/// A storage server for one test.
struct Store {
    _server: Service,
    /// Environment for Almanac's services.
    env: Vec<(String, String)>,
    /// Where the test's files go: `s3://almanac/` or `az://almanac/`.
    root: String,
    /// Python (boto3 / azure-storage-blob / deltalake) snippets' setup for this store.
    python_setup: String,
}

fn wait_port(port: u16, server: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the storage server did not start:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn python(code: &str, env: &[(String, String)]) -> String {
    let out = Command::new("python3")
        .args(["-c", code])
        .current_dir(std::env::temp_dir())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start_s3(dir: &Path) -> Store {
    let port = free_port();
    let server = Service::spawn(
        "moto S3 server",
        "moto_server",
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        dir.join("s3.log"),
    );
    wait_port(port, &server);
    let endpoint = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "almanac-test-key"),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let python_setup = format!(
        "import boto3, os\n\
         s3 = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='almanac-test-key', \
         aws_secret_access_key='{S3_SECRET}', region_name='us-east-1')\n\
         def make(): s3.create_bucket(Bucket='{BUCKET}')\n\
         def put(local, key): s3.upload_file(local, '{BUCKET}', key)\n\
         opts = {{'AWS_ENDPOINT_URL': '{endpoint}', 'AWS_ALLOW_HTTP': 'true', \
         'AWS_ACCESS_KEY_ID': 'almanac-test-key', 'AWS_SECRET_ACCESS_KEY': '{S3_SECRET}', \
         'AWS_REGION': 'us-east-1', 'AWS_S3_ALLOW_UNSAFE_RENAME': 'true'}}\n"
    );
    Store {
        _server: server,
        env,
        root: format!("s3://{BUCKET}/"),
        python_setup,
    }
}

fn start_azurite(dir: &Path) -> Store {
    let port = free_port();
    let data = dir.join("azurite");
    std::fs::create_dir_all(&data).unwrap();
    let server = Service::spawn(
        "Azurite",
        "azurite-blob",
        &[
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            data.display().to_string(),
            "--skipApiVersionCheck".into(),
            "--loose".into(),
        ],
        dir.join("azurite.log"),
    );
    wait_port(port, &server);
    let url = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("AZURE_STORAGE_USE_EMULATOR".to_string(), "true".to_string()),
        ("AZURITE_BLOB_STORAGE_URL".to_string(), url.clone()),
    ];
    let python_setup = format!(
        "from azure.storage.blob import BlobServiceClient\n\
         client = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;\
         AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
         BlobEndpoint={url}/devstoreaccount1;')\n\
         def make(): client.create_container('{BUCKET}')\n\
         def put(local, key):\n    \
             with open(local, 'rb') as f: client.get_blob_client('{BUCKET}', key).upload_blob(f)\n\
         opts = {{'AZURE_STORAGE_USE_EMULATOR': 'true', 'AZURE_STORAGE_ALLOW_HTTP': 'true'}}\n"
    );
    Store {
        _server: server,
        env,
        root: format!("az://{BUCKET}/"),
        python_setup,
    }
}

/// Creates the bucket and uploads `local` (a folder) under `prefix`.
fn upload(store: &Store, local: &Path, prefix: &str) {
    let code = format!(
        "{}\nmake()\nimport os\nroot = '{}'\n\
         for d, _, files in os.walk(root):\n    \
             for f in files:\n        \
                 p = os.path.join(d, f)\n        \
                 put(p, '{prefix}' + os.path.relpath(p, root))\n",
        store.python_setup,
        local.display()
    );
    python(&code, &store.env);
}

/// The rows of a Delta table (all columns but the write time), sorted, read by delta-rs'
/// Python release: a reader built apart from Almanac.
fn delta_rows(store: &Store, uri: &str, remote: bool) -> String {
    let code = format!(
        "{}\nfrom deltalake import DeltaTable\n\
         t = DeltaTable('{uri}', storage_options=opts if {} else None).to_pyarrow_table()\n\
         t = t.drop(['create_timestamp'])\n\
         rows = sorted(str(r) for r in t.to_pylist())\n\
         print(len(rows)); print('\\n'.join(rows))\n",
        store.python_setup,
        if remote { "True" } else { "False" }
    );
    python(&code, &store.env)
}

/// The example transactions set over sample data in the store; results compared with the same
/// set over local files.
fn backfill_and_retrieve_on(store: &Store, root: &Path) -> Cluster {
    let (local, remote) = (root.join("local"), root.join("remote"));
    example_store(root, 15, &[&local]);
    upload(store, &root.join("data"), "data/");

    // The same set registered with its source in the store, and its offline store there.
    let sets = root.join("remote-sets/transactions");
    std::fs::create_dir_all(sets.join("spec")).unwrap();
    let from = root.join("featuresets/transactions");
    std::fs::copy(
        from.join("featureset_asset.yaml"),
        sets.join("featureset_asset.yaml"),
    )
    .unwrap();
    let spec = std::fs::read_to_string(from.join("spec/FeatureSetSpec.yaml")).unwrap();
    let spec = spec.replace(
        "../../../data/transactions/*.parquet",
        &format!("{}data/transactions/*.parquet", store.root),
    );
    assert!(spec.contains(&store.root), "{spec}");
    std::fs::write(sets.join("spec/FeatureSetSpec.yaml"), spec).unwrap();
    let h = remote.to_str().unwrap();
    let offline_root = format!("{}offline/", store.root);
    let entity =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud/entities/account.yaml");
    ok(&run_cli(&[
        "--home",
        h,
        "--offline-root",
        &offline_root,
        "entity",
        "create",
        "--file",
        entity.to_str().unwrap(),
    ]));
    ok(&run_cli(&[
        "--home",
        h,
        "featureset",
        "create",
        "--file",
        sets.join("featureset_asset.yaml").to_str().unwrap(),
    ]));

    // The reference: embedded, local files.
    let (start, end) = ("2023-01-01", "2023-01-08");
    ok(&run_cli(&[
        "--home",
        local.to_str().unwrap(),
        "backfill",
        "transactions:1",
        "--start",
        start,
        "--end",
        end,
    ]));
    let retrieve = retrieve_args;
    let mut args = vec!["--home".to_string(), local.display().to_string()];
    args.extend(retrieve(
        root.join("data/observations/batch_inference")
            .to_str()
            .unwrap(),
        &root.join("local-out"),
    ));
    ok(&run_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    // A scheduler and two executors, with everything in the store.
    let mut cluster = Cluster::start_with_env(
        &root.join("cluster"),
        &remote,
        &["--no-schedules"],
        &store.env,
    );
    cluster.add_executor(2, &[]);
    cluster.add_executor(2, &[]);
    cluster.wait_active(2);
    let out = ok(&cluster.cli(&[
        "backfill",
        "transactions:1",
        "--start",
        start,
        "--end",
        end,
        "--wait",
    ]));
    assert!(
        out.contains("succeeded") && out.contains("tasks 7/7"),
        "{out}\n{}",
        cluster.logs()
    );
    let args = retrieve(
        &format!("{}data/observations/batch_inference/", store.root),
        &root.join("remote-out"),
    );
    let out = ok(&cluster.cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(out.contains("retrieved"), "{out}");
    let (a, b) = (
        output_files(&root.join("local-out")),
        output_files(&root.join("remote-out")),
    );
    assert!(a.len() > 2);
    assert!(
        a[1..] == b[1..],
        "the retrieval over {} differs from the local one",
        store.root
    );

    // The offline tables, read by another Delta reader, hold the same rows.
    let local_table = local.join("offline/transactions/1");
    let want = delta_rows(store, local_table.to_str().unwrap(), false);
    let got = delta_rows(store, &format!("{offline_root}transactions/1"), true);
    assert!(want.lines().count() > 100, "{want}");
    assert_eq!(got, want);

    // No credential in any log line.
    for line in all_log_lines(&root.join("cluster")) {
        assert!(!line.contains(S3_SECRET), "a secret in a log line: {line}");
    }
    cluster
}

/// Every line the services logged (whole files, not the tails failures show).
fn all_log_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
    }
    assert!(!lines.is_empty());
    lines
}

#[test]
fn backfill_and_retrieval_on_an_s3_server_equal_local_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = start_s3(tmp.path());
    backfill_and_retrieve_on(&store, tmp.path());
}

#[test]
fn backfill_and_retrieval_on_azurite_equal_local_files_and_wrong_credentials_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = start_azurite(tmp.path());
    let mut cluster = backfill_and_retrieve_on(&store, tmp.path());

    // Executors with a wrong account key (Azurite checks signatures): their tasks fail, the
    // job says which store refused and why, and the key is in no log line.
    const WRONG_KEY: &str = "d3JvbmctYWxtYW5hYy1rZXktdGhhdC1tdXN0LW5vdC1sZWFr";
    cluster.kill_executors();
    cluster
        .env
        .push(("AZURE_STORAGE_ACCOUNT_KEY".into(), WRONG_KEY.into()));
    cluster.add_executor(2, &[]);
    cluster.wait_for("the old executors to leave", Duration::from_secs(60), |c| {
        c.status()
            .executors
            .iter()
            .filter(|e| e.status == "active")
            .count()
            == 1
    });
    let out = cluster.cli(&[
        "backfill",
        "transactions:1",
        "--start",
        "2023-01-02",
        "--end",
        "2023-01-03",
        "--data-status",
        "Complete",
        "--wait",
    ]);
    assert!(!out.success, "{}", out.stdout);
    let shown = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        shown.contains("devstoreaccount1/almanac") && shown.contains("403"),
        "the error should name the store and the refusal:\n{shown}"
    );
    for line in all_log_lines(&tmp.path().join("cluster"))
        .iter()
        .map(String::as_str)
        .chain(shown.lines())
    {
        assert!(
            !line.contains(WRONG_KEY),
            "a credential in a log line: {line}"
        );
        assert!(
            !line.contains(AZURITE_KEY),
            "a credential in a log line: {line}"
        );
    }
}

/// The `readVersion` a Delta commit recorded: the table version its writer started from.
async fn read_version(store: &dyn ObjectStore, table: &Url, version: i64) -> i64 {
    let path = object_store::path::Path::from(format!(
        "{}/_delta_log/{version:020}.json",
        table.path().trim_matches('/')
    ));
    let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["commitInfo"]["readVersion"].as_i64())
        .unwrap_or_else(|| panic!("no readVersion in commit {version}:\n{text}"))
}

const RACE_ROOT: &str = "ALMANAC_TEST_RACE_ROOT";
const RACE_STORE: &str = "ALMANAC_TEST_RACE_STORE";

/// Two writers committing to one offline table in a store at once, from the same snapshot.
/// Run by the tests below in a child process that has the store's environment, so Almanac
/// reaches the store as it does in production (a test must not change the environment of its
/// own, multi-threaded process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of the concurrent_commits_* tests, run in a child process"]
async fn commit_race() {
    let root = std::path::PathBuf::from(std::env::var(RACE_ROOT).unwrap());
    let bucket = Url::parse(&std::env::var(RACE_STORE).unwrap()).unwrap();
    let loaded = LoadedSpec::load(&example_transactions(&root)).unwrap();
    let engine = engine(2).await;
    let store = engine
        .session()
        .runtime_env()
        .object_store(ObjectStoreUrl::parse(bucket.as_str()).unwrap())
        .unwrap();

    // The store must refuse to create an object twice, or two commits could both take a version.
    let probe = object_store::path::Path::from("probe/created-once");
    let create = || PutMode::Create.into();
    store
        .put_opts(&probe, "first".into(), create())
        .await
        .unwrap();
    let again = store.put_opts(&probe, "second".into(), create()).await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{bucket} let a second conditional create through: {again:?}"
    );

    let r = FeatureSetRef::new("transactions", "1");
    let remote = table_url(&bucket.join("offline/").unwrap(), &r).unwrap();
    let local = table_url(&Url::from_directory_path(root.join("local")).unwrap(), &r).unwrap();
    let start = t("2023-01-08");
    let day = |d: i64| TimeRange {
        start: start + d * DAY,
        end: start + (d + 1) * DAY,
    };
    // The reference: the same windows, one after the other, on local files.
    for (d, app) in [(0, "ref-0:0"), (2, "ref-2:0")] {
        materialize_task(&engine, &local, &loaded, day(d), app, 1)
            .await
            .unwrap();
    }

    // Disjoint windows, both planned on the same snapshot (which both create): both land, the
    // later rebased on the earlier.
    let (a, b) = tokio::join!(
        materialize_task(&engine, &remote, &loaded, day(0), "job-a:0", 1),
        materialize_task(&engine, &remote, &loaded, day(2), "job-b:0", 1),
    );
    let mut versions = [a.unwrap().version, b.unwrap().version];
    versions.sort();
    assert_eq!(versions, [Some(1), Some(2)]);
    assert_eq!(
        read_version(store.as_ref(), &remote, 2).await,
        0,
        "the second commit should have started from the version both writers read"
    );

    // The same day rewritten twice at once: both replace its files, so one must lose, with
    // an error the job manager retries.
    let (c, d) = tokio::join!(
        materialize_task(&engine, &remote, &loaded, day(0), "job-c:0", 1),
        materialize_task(&engine, &remote, &loaded, day(0), "job-d:0", 1),
    );
    let (won, (loser, error)) = match (c, d) {
        (Ok(w), Err(l)) => (w, ("job-d:0", l)),
        (Err(l), Ok(w)) => (w, ("job-c:0", l)),
        (c, d) => panic!("exactly one rewrite of a day should commit: {c:?} / {d:?}"),
    };
    assert_eq!(won.version, Some(3), "{won:?}");
    let error = error.to_string();
    assert!(
        error.contains(remote.as_str()) && error.contains("concurrent"),
        "{error}"
    );
    // The loser's rerun builds on the winner's rows and replaces them.
    let rerun = materialize_task(&engine, &remote, &loaded, day(0), loser, 1)
        .await
        .unwrap();
    assert_eq!(rerun.version, Some(4), "{rerun:?}");
    assert!(rerun.replaced >= 1, "{rerun:?}");
}

/// Runs [`commit_race`] against `store`, then compares the table it wrote with the local
/// reference, read by delta-rs' Python release.
fn concurrent_commits_resolve(store: &Store, root: &Path) {
    python(&format!("{}\nmake()\n", store.python_setup), &store.env);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "object_stores::commit_race",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(RACE_ROOT, root)
        .env(RACE_STORE, &store.root)
        .envs(store.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = delta_rows(
        store,
        &root.join("local/transactions/1").display().to_string(),
        false,
    );
    let got = delta_rows(
        store,
        &format!("{}offline/transactions/1", store.root),
        true,
    );
    assert!(want.lines().count() > 100, "{want}");
    assert_eq!(
        got, want,
        "the table differs from the same windows written in turn"
    );
}

#[test]
fn concurrent_commits_to_one_table_on_an_s3_server_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let store = start_s3(tmp.path());
    concurrent_commits_resolve(&store, tmp.path());
}

#[test]
fn concurrent_commits_to_one_table_on_azurite_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let store = start_azurite(tmp.path());
    concurrent_commits_resolve(&store, tmp.path());
}
