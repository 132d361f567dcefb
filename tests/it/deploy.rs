//! `deploy/`: the operator guide's commands run as written, and the image, compose file and
//! Kubernetes manifests agree with the binaries they run.
//!
//! The guide's `bash` blocks are run in order (port numbers swapped for free ones) against a
//! store the test prepares, with checks between them. Its `sh` blocks (docker, kubectl) cannot
//! run here; the files, services and resources they name are checked to exist. Every container
//! definition is fed, command, environment and config file, to the binary it runs with
//! `--check-config`, and the settings that come out must match the ports, probes, services and
//! volumes around it. Schemas come from validators installed by `.ci/run`: `kubernetes-validate`
//! (Kubernetes), `docker-compose config` (compose), `hadolint` (Dockerfile).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_yaml::Value;

use crate::cluster::{SCHEDULER, example_store, free_port, http_get, job_id};
use crate::common::{ok, run_cli};

const EXECUTOR: &str = env!("CARGO_BIN_EXE_it-almanac-executor");
const ALMANAC: &str = env!("CARGO_BIN_EXE_it-almanac");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A fenced code block of the guide, with the `##` section it is in.
#[derive(Debug)]
struct Block {
    section: String,
    lang: String,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let (mut out, mut section, mut open) = (Vec::new(), String::new(), None::<Block>);
    for line in markdown.lines() {
        match open.as_mut() {
            Some(_) if line.starts_with("```") => out.push(open.take().unwrap()),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None if line.starts_with("```") => {
                open = Some(Block {
                    section: section.clone(),
                    lang: line.trim_start_matches('`').trim().to_string(),
                    text: String::new(),
                })
            }
            None if line.starts_with("## ") => section = line[3..].trim().to_string(),
            None => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block in the guide");
    out
}

/// Runs a program to the end; its output, or a panic with it.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    // Other tests move the process's working folder into temporary ones that go away.
    let out = Command::new(program)
        .current_dir(std::env::temp_dir())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (.ci/run installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a service binary makes of a configuration: its `--check-config` settings.
fn check_config(binary: &str, args: &[String], env: &BTreeMap<String, String>) -> Value {
    let out = Command::new(binary)
        .current_dir(std::env::temp_dir())
        .args(args)
        .arg("--check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{binary} {args:?} refused its configuration:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_str(&stdout).unwrap()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no text at {key} in {v:?}"))
}

fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn host_of(address: &str) -> &str {
    address.rsplit_once(':').unwrap().0
}

/// The test binaries under the names the guide and the manifests use.
fn service_binary(name: &str) -> &'static str {
    match name {
        "almanac" => ALMANAC,
        "almanac-scheduler" => SCHEDULER,
        "almanac-executor" => EXECUTOR,
        other => panic!("a container runs {other}, which the image does not hold"),
    }
}

/// Ports the scheduler (`bind`, `executor_bind`, `http_bind`) or an executor (`port`,
/// `grpc_port`, `http_bind`) listens on, by the settings it starts with.
fn listening_ports(settings: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for key in ["bind", "executor_bind", "http_bind"] {
        if let Some(address) = settings[key].as_str() {
            ports.insert(port_of(address));
        }
    }
    for key in ["port", "grpc_port"] {
        if let Some(port) = settings[key].as_u64() {
            ports.insert(port as u16);
        }
    }
    ports
}

/// Bytes of a Kubernetes quantity (`4Gi`) or an Almanac size (`2GiB`).
fn bytes(quantity: &str) -> u64 {
    let digits: String = quantity.chars().take_while(char::is_ascii_digit).collect();
    let unit = match quantity[digits.len()..].trim_end_matches('B') {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other} in {quantity}"),
    };
    digits.parse::<u64>().unwrap() * unit
}

/// Kills what the guide started, whatever happened.
struct GuideProcesses(PathBuf);

impl Drop for GuideProcesses {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pid) = std::fs::read_to_string(entry.path())
            {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
    }
}

/// Runs one `bash` block of the guide in `dir`, within `limit`.
fn run_block(block: &str, dir: &Path, path: &str, limit: Duration) -> String {
    let out_file = dir.join(".block-output");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir)
        .env("PATH", path)
        .env("RUST_LOG", "warn,almanac=info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&out_file)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_file).unwrap_or_default();
    if status.is_none_or(|s| !s.success()) {
        let logs: String = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                format!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect();
        panic!("the guide's block failed ({status:?}):\n{block}\noutput:\n{output}\nlogs:\n{logs}");
    }
    output
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn active_executors(http: u16) -> Option<usize> {
    let response = std::panic::catch_unwind(|| http_get(http, "/readyz")).ok()?;
    let at = response.find("ready; ")?;
    response[at + 7..].split(' ').next()?.parse().ok()
}

#[test]
fn the_operator_guide_runs() {
    let guide = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _processes = GuideProcesses(dir.to_path_buf());

    // The binaries under their release names, first on the PATH.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["almanac", "almanac-scheduler", "almanac-executor"] {
        std::os::unix::fs::symlink(service_binary(name), bin.join(name)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The guide's ports, each swapped for a free one.
    let ports: BTreeMap<u16, u16> = [50061, 50050, 9464, 50051, 50052, 9465, 50053, 50054, 9466]
        .into_iter()
        .map(|p| (p, free_port()))
        .collect();
    let swap = |text: &str| {
        let mut out = text.to_string();
        for (from, to) in &ports {
            out = out.replace(&from.to_string(), &to.to_string());
        }
        out
    };
    let (api, http) = (ports[&50061], ports[&9464]);
    let scheduler = format!("127.0.0.1:{api}");
    let cli = |args: &[&str]| {
        let mut all = vec!["--scheduler", scheduler.as_str()];
        all.extend_from_slice(args);
        ok(&run_cli(&all))
    };

    // The store the scheduler will serve: a registered feature set over sample data.
    let store = dir.join("store");
    example_store(dir, 15, &[&store]);

    let bash: Vec<Block> = blocks(&guide)
        .into_iter()
        .filter(|b| b.lang == "bash")
        .collect();
    let sections: Vec<&str> = bash.iter().map(|b| b.section.as_str()).collect();
    assert_eq!(
        sections,
        [
            "Start a cluster on hosts",
            "Start a cluster on hosts",
            "Scale out and in",
            "Drain an executor",
            "Back up the registry",
            "Upgrade",
            "Logs and metrics",
            "Stop",
        ],
        "the guide's runnable blocks changed: update this test with them"
    );
    let limit = Duration::from_secs(120);
    let mut blocks = bash.iter().map(|b| swap(&b.text));
    let mut next = || run_block(&blocks.next().unwrap(), dir, &path, limit);

    // Start: the scheduler, then an executor.
    next();
    assert!(dir.join("scheduler.pid").is_file());
    let out = next();
    assert!(out.contains("active"), "{out}");
    assert_eq!(active_executors(http), Some(1));

    // Scale out: a second executor joins, and a backfill runs across both.
    next();
    wait_until("two active executors", limit, || {
        active_executors(http) == Some(2)
    });
    let out = cli(&[
        "backfill",
        "transactions:1",
        "--start",
        "2023-01-01",
        "--end",
        "2023-01-05",
        "--wait",
    ]);
    assert!(out.contains("succeeded"), "{out}");
    let first_job = job_id(&out);

    // Drain: the second executor exits cleanly and leaves the cluster.
    next();
    let drained = std::fs::read_to_string(dir.join("executor-2.log")).unwrap();
    assert!(drained.contains("draining"), "{drained}");
    wait_until("the drained executor to leave", limit, || {
        active_executors(http) == Some(1)
    });

    // Backup: a store of its own, with the same feature sets and jobs.
    next();
    let backups: Vec<PathBuf> = std::fs::read_dir(dir.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let listed = |home: &Path, what: &[&str]| {
        let mut args = vec!["--home", home.to_str().unwrap()];
        args.extend_from_slice(what);
        ok(&run_cli(&args))
    };
    for what in [&["featureset", "list"][..], &["entity", "list"][..]] {
        assert_eq!(listed(&backups[0], what), listed(&store, what));
    }
    let jobs = listed(&backups[0], &["job", "list"]);
    assert!(jobs.contains(&first_job), "{jobs}");
    assert!(
        backups[0]
            .join("featuresets/transactions/1/spec/FeatureSetSpec.yaml")
            .is_file()
    );

    // Upgrade: everything stops and comes back on the same store; jobs still run.
    next();
    assert_eq!(active_executors(http), Some(1));
    let out = cli(&[
        "backfill",
        "transactions:1",
        "--start",
        "2023-01-05",
        "--end",
        "2023-01-08",
        "--wait",
    ]);
    assert!(out.contains("succeeded"), "{out}");
    let jobs = cli(&["job", "list"]);
    assert!(jobs.contains(&first_job), "{jobs}");

    // Logs and metrics.
    let out = next();
    assert!(
        out.contains("almanac_jobs{state=\"succeeded\"} 2") && out.contains("almanac_executors"),
        "{out}"
    );

    // Stop: every process exits.
    next();
    wait_until("the processes to stop", limit, || {
        [http, ports[&9465]]
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
    });
}

/// Files, resources and services the guide's `sh` blocks name exist.
fn check_sh_blocks(guide: &str, compose_services: &BTreeSet<String>, k8s: &[Value]) {
    let names = |kind: &str| -> BTreeSet<String> {
        k8s.iter()
            .filter(|r| r["kind"].as_str() == Some(kind))
            .map(|r| text(&r["metadata"], "name").to_string())
            .collect()
    };
    let root = deploy_dir().join("..");
    let mut checked = 0;
    for block in blocks(guide).iter().filter(|b| b.lang == "sh") {
        for line in block.text.lines() {
            let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
            for pair in words.windows(2) {
                if matches!(pair[0], "-f" | "-k") {
                    assert!(root.join(pair[1]).exists(), "{line}: no {}", pair[1]);
                    checked += 1;
                }
                for (prefix, kind) in [("deployment/", "Deployment"), ("service/", "Service")] {
                    if let Some(name) = pair[1].strip_prefix(prefix) {
                        assert!(names(kind).contains(name), "{line}: no {kind} {name}");
                        checked += 1;
                    }
                }
            }
            if let Some(at) = words.iter().position(|w| *w == "compose") {
                let command = words.get(at + 3).copied().unwrap_or_default();
                let service = words[at + 4..]
                    .iter()
                    .find(|w| !w.starts_with('-'))
                    .copied();
                if matches!(command, "stop" | "logs" | "run" | "restart")
                    && let Some(service) = service
                {
                    assert!(compose_services.contains(service), "{line}: no {service}");
                    checked += 1;
                }
            }
            if let Some(at) = words.iter().position(|w| *w == "set") {
                let (deployment, assignment) = (words[at + 2], words[at + 3]);
                let container = assignment.split('=').next().unwrap();
                let resource = k8s
                    .iter()
                    .find(|r| {
                        r["kind"].as_str() == Some("Deployment")
                            && Some(r["metadata"]["name"].as_str().unwrap_or_default())
                                == deployment.strip_prefix("deployment/")
                    })
                    .unwrap_or_else(|| panic!("{line}: no {deployment}"));
                let containers = resource["spec"]["template"]["spec"]["containers"]
                    .as_sequence()
                    .unwrap();
                assert!(
                    containers
                        .iter()
                        .any(|c| c["name"].as_str() == Some(container)),
                    "{line}: no container {container}"
                );
            }
        }
    }
    assert!(
        checked >= 10,
        "the guide's sh blocks name too little: {checked}"
    );
}

/// Settings files a container mounts, by their path inside it.
type Mounts = BTreeMap<String, PathBuf>;

/// Runs a container's command through `--check-config`, its config files swapped for local
/// copies; returns the binary's name and its settings.
fn container_settings(
    command: &[String],
    mounts: &Mounts,
    env: &BTreeMap<String, String>,
) -> (String, Value) {
    let binary = command[0].clone();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| {
            mounts
                .get(a)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| a.clone())
        })
        .collect();
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            assert!(
                Path::new(&args[i + 1]).is_file(),
                "{command:?}: the config file is not mounted"
            );
        }
    }
    let settings = check_config(service_binary(&binary), &args, env);
    (binary, settings)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn deployment_files_match_the_binaries() {
    let deploy = deploy_dir();
    let tmp = tempfile::tempdir().unwrap();

    // The image: lint-clean, non-root, the three binaries, the services' ports exposed.
    run(
        "hadolint",
        &[deploy.join("Dockerfile").to_str().unwrap()],
        &[],
    );
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime image sets a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    for name in ["almanac", "almanac-scheduler", "almanac-executor"] {
        assert!(
            dockerfile.contains(&format!("target/release/{name} ")),
            "the image does not hold {name}"
        );
    }
    let exposed: BTreeSet<u16> = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let defaults: BTreeSet<u16> = listening_ports(&check_config(SCHEDULER, &[], &BTreeMap::new()))
        .union(&listening_ports(&check_config(
            EXECUTOR,
            &["--scheduler".into(), "scheduler:50050".into()],
            &BTreeMap::new(),
        )))
        .copied()
        .collect();
    assert_eq!(exposed, defaults, "EXPOSE should list the services' ports");
    let image = dockerfile
        .lines()
        .find_map(|l| l.split(" -t ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the Dockerfile says how to build and tag it")
        .to_string();

    // Compose: valid by docker-compose, resolved by it (anchors, variables).
    let compose_file = deploy.join("compose.yaml");
    let secret = "compose-check-secret";
    let resolved = run(
        "docker-compose",
        &["-f", compose_file.to_str().unwrap(), "config"],
        &[
            ("AWS_ACCESS_KEY_ID", "compose-check"),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    assert!(
        !std::fs::read_to_string(&compose_file)
            .unwrap()
            .contains(secret)
    );
    let compose: Value = serde_yaml::from_str(&resolved).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let mut by_binary: BTreeMap<String, Vec<(String, Value, &Value)>> = BTreeMap::new();
    for (name, service) in services {
        let name = name.as_str().unwrap().to_string();
        if service["image"].as_str() != Some(image.as_str()) {
            continue;
        }
        let mounts: Mounts = strings(&service["volumes"])
            .iter()
            .filter_map(|v| {
                let mut parts = v.split(':');
                let (from, to) = (parts.next()?, parts.next()?);
                Path::new(from)
                    .is_file()
                    .then(|| (to.to_string(), PathBuf::from(from)))
            })
            .collect();
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                        };
                        (k.as_str().unwrap().to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (binary, settings) = container_settings(&strings(&service["command"]), &mounts, &env);
        // Health checks ask the service's own health port.
        let health = strings(&service["healthcheck"]["test"]).join(" ");
        let http = port_of(text(&settings, "http_bind"));
        assert!(
            health.contains(&format!(":{http}/readyz")),
            "{name}: the health check {health:?} does not ask port {http}"
        );
        assert_eq!(host_of(text(&settings, "http_bind")), "0.0.0.0", "{name}");
        assert_eq!(text(&settings, "advertise_host"), name, "{name}");
        // Credentials come from the environment of compose, not the file.
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], secret, "{name}");
        by_binary
            .entry(binary)
            .or_default()
            .push((name, settings, service));
    }
    let schedulers = &by_binary["almanac-scheduler"];
    let executors = &by_binary["almanac-executor"];
    assert_eq!((schedulers.len(), executors.len()), (1, 2));
    let (scheduler_name, scheduler, scheduler_service) = &schedulers[0];
    let published: BTreeSet<u16> = scheduler_service["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["target"].as_u64().unwrap() as u16)
        .collect();
    for key in ["bind", "http_bind"] {
        let address = text(scheduler, key);
        assert_eq!(host_of(address), "0.0.0.0", "{key}");
        assert!(published.contains(&port_of(address)), "{key} not published");
    }
    let executor_endpoint = format!(
        "{scheduler_name}:{}",
        port_of(text(scheduler, "executor_bind"))
    );
    let s3 = &services[&Value::from("s3")];
    let s3_port = strings(&s3["command"])
        .windows(2)
        .find(|w| w[0] == "-p")
        .map(|w| w[1].clone())
        .expect("the S3 server's port");
    for (name, settings, service) in executors {
        assert_eq!(text(settings, "scheduler"), executor_endpoint, "{name}");
        assert_eq!(text(settings, "bind_host"), "0.0.0.0", "{name}");
        let work = text(settings, "work_dir");
        assert!(
            strings(&service["volumes"])
                .iter()
                .any(|v| v.split(':').nth(1) == Some(work)),
            "{name}: its work folder {work} is not a volume"
        );
        assert_eq!(
            service["environment"]["AWS_ENDPOINT_URL"].as_str(),
            Some(format!("http://s3:{s3_port}").as_str()),
            "{name}"
        );
    }
    let compose_services: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();

    // Kubernetes: valid by the API's schemas, and consistent.
    let k8s_dir = deploy.join("k8s");
    let kustomization: Value =
        serde_yaml::from_str(&std::fs::read_to_string(k8s_dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let files = strings(&kustomization["resources"]);
    let mut on_disk: Vec<String> = std::fs::read_dir(&k8s_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml should list every manifest"
    );
    let paths: Vec<String> = files
        .iter()
        .map(|f| k8s_dir.join(f).display().to_string())
        .collect();
    let mut args = vec!["--strict", "--quiet"];
    args.extend(paths.iter().map(String::as_str));
    run("kubernetes-validate", &args, &[]);
    let mut k8s: Vec<Value> = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            k8s.push(Value::deserialize(doc).unwrap());
        }
    }
    let find = |kind: &str, name: &str| -> &Value {
        k8s.iter()
            .find(|r| {
                r["kind"].as_str() == Some(kind) && r["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let mut settings_of: BTreeMap<String, (Value, &Value)> = BTreeMap::new();
    for deployment in k8s
        .iter()
        .filter(|r| r["kind"].as_str() == Some("Deployment"))
    {
        let name = text(&deployment["metadata"], "name");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}"
        );
        let containers = pod["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{name}");
        let container = &containers[0];
        assert_eq!(container["image"].as_str(), Some(image.as_str()), "{name}");
        let volumes = pod["volumes"].as_sequence().unwrap();
        let volume = |mount: &str| {
            volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(mount))
                .unwrap_or_else(|| panic!("{name}: no volume {mount}"))
        };
        // Config maps mounted as folders: their keys become files.
        let mut mounts = Mounts::new();
        let mut mounted: Vec<(String, &Value)> = Vec::new();
        for mount in container["volumeMounts"].as_sequence().unwrap() {
            let at = text(mount, "mountPath");
            let v = volume(text(mount, "name"));
            mounted.push((at.to_string(), v));
            if let Some(map) = v["configMap"]["name"].as_str() {
                for (key, body) in find("ConfigMap", map)["data"].as_mapping().unwrap() {
                    let key = key.as_str().unwrap();
                    let local = tmp.path().join(format!("{name}-{key}"));
                    std::fs::write(&local, body.as_str().unwrap()).unwrap();
                    mounts.insert(format!("{at}/{key}"), local);
                }
            }
        }
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_sequence().into_iter().flatten() {
            let secret = find("Secret", text(&from["secretRef"], "name"));
            for (k, v) in secret["stringData"].as_mapping().unwrap() {
                env.insert(
                    k.as_str().unwrap().to_string(),
                    v.as_str().unwrap().to_string(),
                );
            }
        }
        for e in container["env"].as_sequence().into_iter().flatten() {
            let value = match e["value"].as_str() {
                Some(v) => v.to_string(),
                // Filled in by Kubernetes: a pod IP, say.
                None => {
                    assert!(e["valueFrom"]["fieldRef"]["fieldPath"].is_string(), "{e:?}");
                    "10.0.0.7".to_string()
                }
            };
            env.insert(text(e, "name").to_string(), value);
        }
        let (binary, settings) = container_settings(&strings(&container["command"]), &mounts, &env);
        // Every port it listens on is declared, and the probes ask its health port.
        let declared: BTreeMap<String, u16> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    text(p, "name").to_string(),
                    p["containerPort"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        let declared_ports: BTreeSet<u16> = declared.values().copied().collect();
        assert_eq!(declared_ports, listening_ports(&settings), "{name}");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{name} {probe}");
            let port = get["port"]
                .as_u64()
                .map(|p| p as u16)
                .unwrap_or_else(|| declared[text(get, "port")]);
            assert_eq!(
                port,
                port_of(text(&settings, "http_bind")),
                "{name} {probe}"
            );
        }
        let on_volume = |folder: &str| {
            mounted
                .iter()
                .find(|(at, _)| folder.starts_with(at.as_str()))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{name}: {folder} is on no volume"))
        };
        if binary == "almanac-scheduler" {
            let store = on_volume(text(&settings, "home"));
            let claim = text(&store["persistentVolumeClaim"], "claimName");
            find("PersistentVolumeClaim", claim);
        } else {
            on_volume(text(&settings, "work_dir"));
            let limits = &container["resources"]["limits"];
            assert!(
                container["resources"]["requests"]["cpu"].is_string(),
                "{name}"
            );
            assert!(
                bytes(text(&settings, "memory_limit")) < bytes(text(limits, "memory")),
                "{name}: the memory pool must fit in the container"
            );
        }
        settings_of.insert(binary, (settings, container));
    }
    // Executors reach the scheduler through its Service, on the port behind executor_bind.
    let (scheduler, scheduler_container) = &settings_of["almanac-scheduler"];
    let (executor, _) = &settings_of["almanac-executor"];
    let service = find("Service", "almanac-scheduler");
    let target_of = |port: &Value| -> u16 {
        port["targetPort"]
            .as_u64()
            .map(|p| p as u16)
            .unwrap_or_else(|| {
                scheduler_container["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == port["targetPort"])
                    .and_then(|p| p["containerPort"].as_u64())
                    .unwrap() as u16
            })
    };
    let executor_port = port_of(text(scheduler, "executor_bind"));
    let front = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| target_of(p) == executor_port)
        .expect("the Service exposes the executors' port");
    assert_eq!(
        text(executor, "scheduler"),
        format!("almanac-scheduler:{}", front["port"].as_u64().unwrap())
    );
    assert_eq!(text(scheduler, "advertise_host"), "almanac-scheduler");
    let targets: BTreeSet<u16> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(target_of)
        .collect();
    assert_eq!(targets, listening_ports(scheduler));
    let hpa = find("HorizontalPodAutoscaler", "almanac-executor");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("almanac-executor")
    );
    find("Deployment", "almanac-executor");

    let guide = std::fs::read_to_string(deploy.join("README.md")).unwrap();
    check_sh_blocks(&guide, &compose_services, &k8s);
}

#[test]
fn a_backup_refuses_a_missing_store_and_a_used_folder_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, to) = (tmp.path().join("store"), tmp.path().join("backup"));
    let home_arg = home.to_str().unwrap();
    let error = crate::common::failed(&run_cli(&[
        "--home",
        home_arg,
        "backup",
        "--to",
        to.to_str().unwrap(),
    ]));
    assert!(
        error.contains("no store at") && error.contains("store"),
        "{error}"
    );
    assert!(
        !home.exists() && !to.exists(),
        "a failed backup created files"
    );

    let entity = deploy_dir().join("../examples/fraud/entities/account.yaml");
    ok(&run_cli(&[
        "--home",
        home_arg,
        "entity",
        "create",
        "--file",
        entity.to_str().unwrap(),
    ]));
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("keep.txt"), "mine").unwrap();
    let error = crate::common::failed(&run_cli(&[
        "--home",
        home_arg,
        "backup",
        "--to",
        to.to_str().unwrap(),
    ]));
    assert!(error.contains("is not empty"), "{error}");
    let left: Vec<_> = std::fs::read_dir(&to).unwrap().collect();
    assert_eq!(left.len(), 1);

    let fresh = tmp.path().join("fresh");
    let out = ok(&run_cli(&[
        "--home",
        home_arg,
        "backup",
        "--to",
        fresh.to_str().unwrap(),
    ]));
    assert!(out.contains("backed up"), "{out}");
    let listed = |h: &Path| ok(&run_cli(&["--home", h.to_str().unwrap(), "entity", "list"]));
    assert_eq!(listed(&fresh), listed(&home));
}
