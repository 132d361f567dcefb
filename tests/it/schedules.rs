//! Scheduled materialization: schedules set through the CLI, triggered by a real scheduler
//! process (and by `almanac serve`), on a clock the test moves (hours and days in seconds) and
//! on the real clock (a one-minute schedule). Each checks that every trigger's window is
//! materialized exactly once, in order, without gaps or overlaps, and that the offline store
//! then holds exactly what an embedded whole-day backfill computes for those windows.

use std::path::Path;
use std::time::{Duration, Instant};

use almanac_jobs::materialize::DataStatus;
use almanac_jobs::registry::{FeatureSetRef, Registry, RunState, ScheduleInfo, TriggerState};
use almanac_jobs::source::TimeRange;
use almanac_jobs::time::format_instant;

use crate::cluster::{
    Cluster, Service, committed_task_ids, example_store, example_store_from, http_get,
    offline_query,
};
use crate::common::{failed, ok, run_cli};

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
/// The example transactions set's source delay.
const DELAY: i64 = 20 * MINUTE;

fn transactions() -> FeatureSetRef {
    FeatureSetRef::new("transactions", "1")
}

fn utc(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_micros()
}

/// Moves the scheduler's clock (written whole, then renamed, so it is never read half-written).
fn set_clock(file: &Path, at: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, at).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn schedule(home: &Path) -> ScheduleInfo {
    Registry::open(home)
        .unwrap()
        .schedule(&transactions())
        .unwrap()
        .expect("a schedule")
}

/// Waits until the schedule satisfies `done`, showing the services' logs if it never does.
fn wait_schedule(
    cluster: &Cluster,
    home: &Path,
    what: &str,
    done: impl Fn(&ScheduleInfo) -> bool,
) -> ScheduleInfo {
    let mut last = None;
    cluster.wait_for(what, Duration::from_secs(180), |_| {
        let s = schedule(home);
        let ok = done(&s);
        last = Some(s);
        ok
    });
    last.unwrap()
}

/// The job state of the trigger at `t`, if it was submitted.
fn trigger_state(s: &ScheduleInfo, t: i64) -> Option<RunState> {
    s.recent
        .iter()
        .find(|x| x.trigger == t && x.state == TriggerState::Submitted)
        .and_then(|x| x.job_state)
}

/// The offline rows with a timestamp in `range` (floats rounded: a window's sums depend in
/// their last bits on where the scan starts), sorted, one line each.
fn rows_in(home: &Path, range: TimeRange) -> Vec<String> {
    use datafusion::arrow::array::AsArray;
    let sql = format!(
        "SELECT concat_ws('|', \"accountID\", CAST(CAST(\"timestamp\" AS BIGINT) AS VARCHAR),
                CAST(transaction_3d_count AS VARCHAR), CAST(round(transaction_amount_3d_sum, 6) AS VARCHAR),
                CAST(round(transaction_amount_3d_avg, 6) AS VARCHAR), CAST(transaction_7d_count AS VARCHAR),
                CAST(round(transaction_amount_7d_sum, 6) AS VARCHAR), CAST(round(transaction_amount_7d_avg, 6) AS VARCHAR)) AS row
         FROM t WHERE CAST(\"timestamp\" AS BIGINT) >= {} AND CAST(\"timestamp\" AS BIGINT) < {}",
        range.start, range.end
    );
    let mut rows = Vec::new();
    for b in offline_query(home, &sql) {
        let col = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        rows.extend(
            col.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string()),
        );
    }
    rows.sort();
    rows
}

/// The store's rows in `range` equal the reference's, and none is there twice.
fn assert_rows_match(home: &Path, reference: &Path, range: TimeRange) {
    let got = rows_in(home, range);
    let want = rows_in(reference, range);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "a row was materialized twice");
    assert!(!want.is_empty(), "the reference has no row in the range");
    if got != want {
        let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(3).collect();
        let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
        panic!(
            "{} rows vs {} expected in [{}, {}); missing {missing:?}, unexpected {extra:?}",
            got.len(),
            want.len(),
            format_instant(range.start),
            format_instant(range.end)
        );
    }
}

/// Scheduled runs, oldest trigger first: no two ran at once, and each started after the
/// previous ended.
fn assert_runs_never_overlap(home: &Path, s: &ScheduleInfo) {
    let registry = Registry::open(home).unwrap();
    let mut submitted: Vec<_> = s
        .recent
        .iter()
        .filter(|t| t.state == TriggerState::Submitted)
        .collect();
    submitted.sort_by_key(|t| t.trigger);
    let jobs: Vec<_> = submitted
        .iter()
        .map(|t| registry.job(t.job.as_ref().unwrap()).unwrap().unwrap())
        .collect();
    for pair in jobs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (Some(ended), Some(started)) = (&a.finished_at, &b.started_at) else {
            panic!("scheduled job without times: {a:?} {b:?}");
        };
        assert!(
            started >= ended,
            "job {} started at {started} before job {} ended at {ended}",
            b.id,
            a.id
        );
    }
}

fn status_of(home: &Path, range: TimeRange) -> Vec<(i64, i64, DataStatus)> {
    Registry::open(home)
        .unwrap()
        .timeline(&transactions())
        .unwrap()
        .within(range)
        .iter()
        .map(|i| (i.start, i.end, i.status))
        .collect()
}

#[test]
fn a_controlled_clock_runs_hours_and_days_of_schedule_exactly_once_through_restarts_failures_and_downtime()
 {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (home, reference) = (root.join("store"), root.join("reference"));
    example_store(root, 20, &[&home, &reference]);
    ok(&run_cli(&[
        "--home",
        reference.to_str().unwrap(),
        "backfill",
        "transactions:1",
        "--start",
        "2023-01-04",
        "--end",
        "2023-01-08",
    ]));
    let clock = root.join("clock");
    set_clock(&clock, "2023-01-05T00:10:00Z");
    let mut cluster = Cluster::start_scheduling(
        &root.join("cluster"),
        &home,
        &[
            "--clock-file",
            clock.to_str().unwrap(),
            "--schedule-tick-secs",
            "0.2",
            "--catch-up-limit",
            "3",
        ],
    );
    cluster.add_executor(2, &[]);
    cluster.wait_active(1);

    // Hourly, replacing the asset's daily schedule; it starts at the scheduler's now.
    let out = ok(&cluster.cli(&["featureset", "schedule", "transactions:1", "--every", "1h"]));
    assert!(out.contains("schedule: every 1 hour (UTC)"), "{out}");
    assert!(out.contains("next trigger: 2023-01-05T01:00:00Z"), "{out}");
    wait_schedule(&cluster, &home, "the schedule to start", |s| {
        s.cursor.is_some()
    });
    assert_eq!(schedule(&home).cursor, Some(utc("2023-01-05T00:10:00Z")));

    // Runs longer than the interval: the clock passes the next trigger while a run is going,
    // and that trigger waits for it; later, two due at once run one after the other.
    set_clock(&clock, "2023-01-05T01:00:00Z");
    wait_schedule(&cluster, &home, "the 01:00 trigger", |s| {
        trigger_state(s, utc("2023-01-05T01:00:00Z")).is_some()
    });
    set_clock(&clock, "2023-01-05T02:00:00Z");
    wait_schedule(&cluster, &home, "the 02:00 run", |s| {
        trigger_state(s, utc("2023-01-05T02:00:00Z")) == Some(RunState::Succeeded)
    });
    set_clock(&clock, "2023-01-05T03:30:00Z");
    wait_schedule(&cluster, &home, "the 03:00 run", |s| {
        trigger_state(s, utc("2023-01-05T03:00:00Z")) == Some(RunState::Succeeded)
    });
    let log = cluster.scheduler.as_ref().unwrap().log();
    assert!(
        log.contains("trigger waits: the previous scheduled run is still going"),
        "{log}"
    );

    // A scheduler killed as soon as a trigger is recorded: the run finishes after the
    // restart, and the trigger is not submitted again.
    set_clock(&clock, "2023-01-05T04:00:00Z");
    let s = wait_schedule(&cluster, &home, "the 04:00 trigger", |s| {
        trigger_state(s, utc("2023-01-05T04:00:00Z")).is_some()
    });
    cluster.scheduler.as_mut().unwrap().kill();
    let job_0400 = s.recent[0].job.clone().unwrap();
    cluster.start_scheduler();
    wait_schedule(&cluster, &home, "the 04:00 run after a restart", |s| {
        trigger_state(s, utc("2023-01-05T04:00:00Z")) == Some(RunState::Succeeded)
    });
    let commits = committed_task_ids(&home, job_0400.as_str());
    assert!(
        !commits.is_empty() && commits.values().all(|n| *n == 1),
        "{commits:?}"
    );

    // Two runs fail (the source is unreadable): their windows are Incomplete, and the repeated
    // failure shows in the metrics, the log and `status`.
    let source = root.join("data/transactions/part-00000.parquet");
    let saved = std::fs::read(&source).unwrap();
    std::fs::write(&source, b"not parquet").unwrap();
    set_clock(&clock, "2023-01-05T05:00:00Z");
    wait_schedule(&cluster, &home, "the 05:00 run to fail", |s| {
        trigger_state(s, utc("2023-01-05T05:00:00Z")) == Some(RunState::Failed)
    });
    set_clock(&clock, "2023-01-05T06:00:00Z");
    let s = wait_schedule(&cluster, &home, "the 06:00 run to fail", |s| {
        trigger_state(s, utc("2023-01-05T06:00:00Z")) == Some(RunState::Failed)
    });
    assert_eq!(s.consecutive_failures(), 2);
    cluster.wait_for("the failure metric", Duration::from_secs(10), |c| {
        http_get(c.http_port, "/metrics")
            .contains("almanac_schedule_consecutive_failures{feature_set=\"transactions:1\"} 2")
    });
    cluster.wait_for("the failure log", Duration::from_secs(10), |c| {
        c.scheduler
            .as_ref()
            .unwrap()
            .log()
            .contains("failed_in_a_row=2")
    });
    let status = ok(&cluster.cli(&["featureset", "status", "transactions:1"]));
    assert!(
        status.contains("failing: the last 2 scheduled run(s) failed"),
        "{status}"
    );
    assert!(
        status.contains("[2023-01-05T03:40:00Z, 2023-01-05T05:40:00Z) Incomplete"),
        "{status}"
    );
    std::fs::write(&source, saved).unwrap();

    // Down for six intervals: the three newest missed triggers run, in order; the three
    // before them are skipped and listed.
    cluster.scheduler.as_mut().unwrap().kill();
    set_clock(&clock, "2023-01-05T12:00:00Z");
    cluster.start_scheduler();
    let s = wait_schedule(&cluster, &home, "the catch-up", |s| {
        trigger_state(s, utc("2023-01-05T12:00:00Z")) == Some(RunState::Succeeded)
    });
    let skipped: Vec<_> = s
        .recent
        .iter()
        .filter(|t| t.state == TriggerState::Skipped)
        .collect();
    assert_eq!(skipped.len(), 1, "{:?}", s.recent);
    assert_eq!(skipped[0].trigger, utc("2023-01-05T09:00:00Z"));
    assert_eq!(skipped[0].skipped, 3);
    assert_eq!(
        skipped[0].window,
        TimeRange {
            start: utc("2023-01-05T05:40:00Z"),
            end: utc("2023-01-05T08:40:00Z")
        }
    );
    let log = cluster.scheduler.as_ref().unwrap().log();
    assert!(
        log.contains("missed triggers beyond the catch-up limit are skipped")
            && log.contains("2023-01-05T07:00:00Z, 2023-01-05T08:00:00Z, 2023-01-05T09:00:00Z"),
        "{log}"
    );
    assert_eq!(s.consecutive_failures(), 0);
    let status = ok(&cluster.cli(&["featureset", "status", "transactions:1"]));
    assert!(
        status.contains(
            "2023-01-05T09:00:00Z  skipped 3 trigger(s) up to here (catch-up limit); window \
             [2023-01-05T05:40:00Z, 2023-01-05T08:40:00Z) not materialized"
        ),
        "{status}"
    );

    // Every hourly trigger, in order: each window starts where the previous ended, except
    // around the skipped ones.
    let mut hourly: Vec<_> = s
        .recent
        .iter()
        .filter(|t| t.state == TriggerState::Submitted)
        .map(|t| (t.trigger, t.window))
        .collect();
    hourly.sort_by_key(|(t, _)| *t);
    let expected: Vec<i64> = [1, 2, 3, 4, 5, 6, 10, 11, 12]
        .iter()
        .map(|h| utc("2023-01-05T00:00:00Z") + h * HOUR)
        .collect();
    assert_eq!(hourly.iter().map(|(t, _)| *t).collect::<Vec<_>>(), expected);
    for (t, w) in &hourly {
        assert_eq!(
            *w,
            TimeRange {
                start: t - HOUR - DELAY,
                end: t - DELAY
            }
        );
    }
    assert_runs_never_overlap(&home, &s);

    // The failed windows are retried by a backfill by status, through the scheduler.
    let out = ok(&cluster.cli(&[
        "backfill",
        "transactions:1",
        "--start",
        "2023-01-05",
        "--end",
        "2023-01-06",
        "--data-status",
        "Incomplete",
        "--wait",
    ]));
    assert!(out.contains("succeeded"), "{out}");
    let day5 = TimeRange {
        start: utc("2023-01-04T23:40:00Z"),
        end: utc("2023-01-05T11:40:00Z"),
    };
    assert_eq!(
        status_of(&home, day5),
        [
            (
                day5.start,
                utc("2023-01-05T05:40:00Z"),
                DataStatus::Complete
            ),
            (
                utc("2023-01-05T05:40:00Z"),
                utc("2023-01-05T08:40:00Z"),
                DataStatus::None
            ),
            (utc("2023-01-05T08:40:00Z"), day5.end, DataStatus::Complete),
        ]
    );

    // Daily at 02:30 Berlin time: each run rewrites a day that hourly runs partly filled,
    // keeping what lies outside its window.
    let out = ok(&cluster.cli(&[
        "featureset",
        "schedule",
        "transactions:1",
        "--every",
        "1d",
        "--start",
        "2023-01-01T02:30:00",
        "--time-zone",
        "Europe/Berlin",
    ]));
    assert!(
        out.contains("every 1 day from 2023-01-01T02:30:00 (Europe/Berlin)"),
        "{out}"
    );
    wait_schedule(&cluster, &home, "the daily schedule to start", |s| {
        s.cursor.is_some()
    });
    set_clock(&clock, "2023-01-07T02:00:00Z");
    let s = wait_schedule(&cluster, &home, "two daily runs", |s| {
        trigger_state(s, utc("2023-01-07T01:30:00Z")) == Some(RunState::Succeeded)
    });
    assert_eq!(
        trigger_state(&s, utc("2023-01-06T01:30:00Z")),
        Some(RunState::Succeeded)
    );
    assert_runs_never_overlap(&home, &s);
    let covered = TimeRange {
        start: utc("2023-01-04T23:40:00Z"),
        end: utc("2023-01-07T01:10:00Z"),
    };
    assert_eq!(
        status_of(&home, covered),
        [(covered.start, covered.end, DataStatus::Complete)]
    );
    assert_rows_match(&home, &reference, covered);
    assert_eq!(
        rows_in(
            &home,
            TimeRange {
                start: i64::MIN,
                end: i64::MAX
            }
        )
        .len(),
        rows_in(&home, covered).len(),
        "rows outside the scheduled windows"
    );
    let status = ok(&cluster.cli(&["featureset", "status", "transactions:1"]));
    assert!(
        status.contains("next trigger: 2023-01-08T01:30:00Z"),
        "{status}"
    );
}

#[test]
fn a_one_minute_schedule_on_the_real_clock_materializes_each_minute_once_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (home, reference) = (root.join("store"), root.join("reference"));
    let today = chrono::Utc::now().date_naive();
    let first = today - chrono::Days::new(2);
    example_store_from(root, &first.to_string(), 15, 60_000, &[&home, &reference]);
    let mut cluster = Cluster::start_scheduling(
        &root.join("cluster"),
        &home,
        &["--schedule-tick-secs", "0.2"],
    );
    cluster.add_executor(2, &[]);
    cluster.wait_active(1);
    ok(&cluster.cli(&["featureset", "schedule", "transactions:1", "--every", "1m"]));
    let started = wait_schedule(&cluster, &home, "the schedule to start", |s| {
        s.cursor.is_some()
    });
    let start = started.cursor.unwrap();
    let runs_after = |s: &ScheduleInfo, n: usize| {
        s.recent
            .iter()
            .filter(|t| t.trigger > start && t.job_state == Some(RunState::Succeeded))
            .count()
            >= n
    };
    wait_schedule(&cluster, &home, "a first run", |s| runs_after(s, 1));
    // Killed as soon as the next trigger is recorded, then restarted.
    wait_schedule(&cluster, &home, "a second trigger", |s| {
        s.recent.iter().filter(|t| t.trigger > start).count() >= 2
    });
    cluster.scheduler.as_mut().unwrap().kill();
    cluster.start_scheduler();
    let s = wait_schedule(&cluster, &home, "three runs", |s| runs_after(s, 3));

    let mut runs: Vec<_> = s
        .recent
        .iter()
        .filter(|t| t.trigger > start)
        .map(|t| (t.trigger, t.window, t.state, t.job_state))
        .collect();
    runs.sort_by_key(|r| r.0);
    let done: Vec<_> = runs
        .iter()
        .take_while(|r| r.3 == Some(RunState::Succeeded))
        .collect();
    assert!(done.len() >= 3, "{runs:?}");
    assert!(
        runs.iter().all(|r| r.2 == TriggerState::Submitted),
        "{runs:?}"
    );
    for pair in done.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, MINUTE, "{runs:?}");
        assert_eq!(pair[1].1.start, pair[0].1.end, "{runs:?}");
    }
    for r in &done {
        assert_eq!(
            r.1,
            TimeRange {
                start: r.0 - MINUTE - DELAY,
                end: r.0 - DELAY
            }
        );
    }
    assert_runs_never_overlap(&home, &s);
    let covered = TimeRange {
        start: done[0].1.start,
        end: done.last().unwrap().1.end,
    };
    assert_eq!(
        status_of(&home, covered),
        [(covered.start, covered.end, DataStatus::Complete)]
    );
    let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    ok(&run_cli(&[
        "--home",
        reference.to_str().unwrap(),
        "backfill",
        "transactions:1",
        "--start",
        &day(today - chrono::Days::new(1)),
        "--end",
        &day(today + chrono::Days::new(1)),
    ]));
    // A minute holds a few events at most; the covered minutes together must hold some.
    let got = rows_in(&home, covered);
    assert_eq!(got, rows_in(&reference, covered));
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len());
}

#[test]
fn almanac_serve_runs_schedules_embedded_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 20, &[&home]);
    let clock = root.join("clock");
    set_clock(&clock, "2023-01-10T00:05:00Z");
    ok(&run_cli(&[
        "--home",
        home.to_str().unwrap(),
        "featureset",
        "schedule",
        "transactions:1",
        "--every",
        "6h",
    ]));
    let mut serve = Service::spawn(
        "almanac serve",
        env!("CARGO_BIN_EXE_it-almanac"),
        &[
            "--home".to_string(),
            home.display().to_string(),
            "serve".to_string(),
            "--clock-file".to_string(),
            clock.display().to_string(),
        ],
        root.join("serve.log"),
    );
    let wait = |what: &str, done: &dyn Fn(&ScheduleInfo) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = schedule(&home);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("the schedule to start", &|s| s.cursor.is_some());
    set_clock(&clock, "2023-01-10T12:00:00Z");
    let s = wait("two runs", &|s| {
        trigger_state(s, utc("2023-01-10T12:00:00Z")) == Some(RunState::Succeeded)
    });
    assert_eq!(
        trigger_state(&s, utc("2023-01-10T06:00:00Z")),
        Some(RunState::Succeeded)
    );
    let covered = TimeRange {
        start: utc("2023-01-10T00:00:00Z") - DELAY,
        end: utc("2023-01-10T12:00:00Z") - DELAY,
    };
    assert_eq!(
        status_of(&home, covered),
        [(covered.start, covered.end, DataStatus::Complete)]
    );
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", serve.log());
    // Through a scheduler, `serve` is refused: the scheduler triggers schedules itself.
    let err = failed(&run_cli(&["--scheduler", "127.0.0.1:1", "serve"]));
    assert!(
        err.contains("the scheduler triggers them itself") || err.contains("triggers them itself"),
        "{err}"
    );
}

#[test]
fn bad_schedules_fail_clearly_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    example_store(root, 15, &[&home]);
    let h = home.to_str().unwrap();
    let accounts = crate::cli::example_set("accounts", root);
    ok(&run_cli(&[
        "--home",
        h,
        "featureset",
        "create",
        "--file",
        accounts.to_str().unwrap(),
    ]));
    let show = |set: &str| ok(&run_cli(&["--home", h, "featureset", "show", set]));
    let before = (show("transactions:1"), show("accounts:1"));
    assert!(
        before
            .0
            .contains("schedule: every 1 day from 2023-01-01T00:00:00 (UTC)"),
        "{}",
        before.0
    );
    assert!(before.1.contains("schedule: none"), "{}", before.1);

    let bad = |args: &[&str]| {
        let mut all = vec!["--home", h, "featureset", "schedule"];
        all.extend_from_slice(args);
        failed(&run_cli(&all))
    };
    let e = bad(&["transactions:1", "--cron", "61 * * * *"]);
    assert!(
        e.contains("cron expression '61 * * * *' does not parse") && e.contains("five fields"),
        "{e}"
    );
    let e = bad(&["transactions:1", "--cron", "0 0 30 2 *"]);
    assert!(e.contains("never fires"), "{e}");
    let e = bad(&[
        "transactions:1",
        "--every",
        "1h",
        "--time-zone",
        "Mars/Olympus",
    ]);
    assert!(e.contains("unknown time zone 'Mars/Olympus'"), "{e}");
    let e = bad(&["transactions:1", "--every", "0h"]);
    assert!(e.contains("interval 0 must be between 1"), "{e}");
    let e = bad(&["transactions:1", "--every", "soon"]);
    assert!(e.contains("--every 'soon'"), "{e}");
    let e = bad(&["accounts:1", "--every", "1h"]);
    assert!(
        e.contains("feature set accounts:1 has offline materialization off"),
        "{e}"
    );
    let e = bad(&["accounts:1", "--disable"]);
    assert!(e.contains("no schedule to disable"), "{e}");
    let e = bad(&["nope:1", "--every", "1h"]);
    assert!(e.contains("nope:1"), "{e}");
    let e = bad(&["transactions:1"]);
    assert!(e.contains("--every") && e.contains("--cron"), "{e}");
    assert_eq!((show("transactions:1"), show("accounts:1")), before);

    // An asset whose schedule has nothing to materialize is refused at registration.
    let asset = root.join("featuresets/accounts/featureset_asset.yaml");
    let text = std::fs::read_to_string(&asset)
        .unwrap()
        .replace("version: \"1\"", "version: \"2\"")
        + "materialization_settings:\n  offline_enabled: false\n  schedule:\n    type: recurrence\n    frequency: Hour\n    interval: 1\n";
    std::fs::write(&asset, text).unwrap();
    let e = failed(&run_cli(&[
        "--home",
        h,
        "featureset",
        "create",
        "--file",
        asset.to_str().unwrap(),
    ]));
    assert!(e.contains("materialization_settings.schedule: a schedule materializes into the offline store, but offline_enabled is false"), "{e}");
    assert!(
        failed(&run_cli(&["--home", h, "featureset", "show", "accounts:2"])).contains("accounts:2")
    );

    // The same through a scheduler: the same errors, nothing changed.
    let cluster = Cluster::start(&root.join("cluster"), &home, &[]);
    let e = failed(&cluster.cli(&[
        "featureset",
        "schedule",
        "transactions:1",
        "--cron",
        "every day",
    ]));
    assert!(
        e.contains("cron expression 'every day' does not parse"),
        "{e}"
    );
    let e = failed(&cluster.cli(&["featureset", "schedule", "accounts:1", "--every", "1h"]));
    assert!(e.contains("offline materialization off"), "{e}");
    assert_eq!(
        ok(&cluster.cli(&["featureset", "show", "accounts:1"])),
        before.1
    );
    // Disabling works and shows.
    let out = ok(&cluster.cli(&["featureset", "schedule", "transactions:1", "--disable"]));
    assert!(out.contains("(disabled)"), "{out}");
    assert!(!schedule(&home).enabled);
}
