//! How registry answers are printed, the same embedded and through `--scheduler`: both modes
//! build the API's messages ([`almanac_proto::registry_view`]) and print them here.

use std::io::Write;

use almanac_jobs::time::format_instant;
use almanac_proto::v1;

use crate::CliError;

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

pub(crate) fn entities(list: &v1::EntityList, out: &mut dyn Write) -> Result<(), CliError> {
    if list.entities.is_empty() {
        writeln!(out, "no entities registered in {}", list.home)?;
    }
    for e in &list.entities {
        let columns: Vec<String> = e
            .index_columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.r#type))
            .collect();
        writeln!(
            out,
            "{}:{}  index: {}  {}",
            e.name,
            e.version,
            columns.join(", "),
            e.description.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

pub(crate) fn entity(e: &v1::Entity, out: &mut dyn Write) -> Result<(), CliError> {
    write!(out, "{}", e.yaml)?;
    Ok(())
}

pub(crate) fn feature_sets(list: &v1::FeatureSetList, out: &mut dyn Write) -> Result<(), CliError> {
    if list.feature_sets.is_empty() {
        writeln!(out, "no feature sets registered in {}", list.home)?;
    }
    for s in &list.feature_sets {
        writeln!(
            out,
            "{}  {}  {} features  offline materialization {}  {}",
            s.reference,
            s.stage,
            s.features,
            on_off(s.offline_enabled),
            s.description.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `featureset show`.
pub(crate) fn feature_set(fs: &v1::FeatureSet, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "feature set {}", fs.reference)?;
    writeln!(out, "stage: {}", fs.stage)?;
    writeln!(out, "registered: {}", fs.created_at)?;
    writeln!(
        out,
        "offline materialization: {}",
        on_off(fs.offline_enabled)
    )?;
    writeln!(out, "entities: {}", fs.entities.join(", "))?;
    writeln!(out, "spec: {}", fs.spec)?;
    schedule_lines(fs.schedule.as_ref(), out)?;
    writeln!(out, "features:")?;
    for f in &fs.features {
        writeln!(
            out,
            "  {} {}  {}",
            f.name,
            f.r#type,
            f.description.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `featureset status`: data intervals and recent jobs.
pub(crate) fn status(fs: &v1::FeatureSet, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "feature set {} ({}, offline materialization {})",
        fs.reference,
        fs.stage,
        on_off(fs.offline_enabled)
    )?;
    if fs.intervals.is_empty() {
        writeln!(out, "data intervals: nothing materialized (all None)")?;
    } else {
        writeln!(out, "data intervals (time not listed is None):")?;
        for i in &fs.intervals {
            writeln!(
                out,
                "  [{}, {}) {}",
                format_instant(i.start_us),
                format_instant(i.end_us),
                i.status
            )?;
        }
    }
    schedule_lines(fs.schedule.as_ref(), out)?;
    if let Some(s) = &fs.schedule
        && !s.recent_triggers.is_empty()
    {
        writeln!(out, "recent triggers:")?;
        for t in s.recent_triggers.iter().take(5) {
            trigger_line(t, out)?;
        }
    }
    if !fs.recent_jobs.is_empty() {
        writeln!(out, "recent jobs:")?;
        for j in &fs.recent_jobs {
            crate::remote::print_job_line(j, out)?;
        }
    }
    Ok(())
}

/// `featureset models`: the lineage from a set to its models.
pub(crate) fn models_using(fs: &v1::FeatureSet, out: &mut dyn Write) -> Result<(), CliError> {
    if fs.models.is_empty() {
        writeln!(out, "no registered model uses {}", fs.reference)?;
    }
    for m in &fs.models {
        writeln!(out, "{m}")?;
    }
    Ok(())
}

pub(crate) fn features(list: &v1::FeatureList, out: &mut dyn Write) -> Result<(), CliError> {
    for f in &list.features {
        writeln!(
            out,
            "{}:{}  {}  {}",
            f.feature_set,
            f.name,
            f.r#type,
            f.description.as_deref().unwrap_or_default()
        )?;
    }
    writeln!(out, "{} feature(s)", list.features.len())?;
    Ok(())
}

pub(crate) fn models(list: &v1::ModelList, out: &mut dyn Write) -> Result<(), CliError> {
    if list.models.is_empty() {
        writeln!(out, "no models registered in {}", list.home)?;
    }
    for m in &list.models {
        writeln!(
            out,
            "{}  uses {}  registered {}",
            m.reference,
            m.feature_sets.join(", "),
            m.created_at
        )?;
    }
    Ok(())
}

pub(crate) fn model(m: &v1::Model, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "model {}", m.reference)?;
    writeln!(out, "registered: {}", m.created_at)?;
    writeln!(out, "files: {}", m.files)?;
    writeln!(out, "feature sets:")?;
    for f in &m.feature_sets {
        writeln!(out, "  {f}")?;
    }
    Ok(())
}

/// What a registration did; a model also lists the feature sets it uses.
pub(crate) fn created(c: &v1::Created, out: &mut dyn Write) -> Result<(), CliError> {
    if c.new {
        writeln!(out, "registered {} {} in {}", c.kind, c.reference, c.home)?;
    } else {
        writeln!(
            out,
            "{} {} is already registered with this content; nothing changed",
            c.kind, c.reference
        )?;
    }
    if !c.feature_sets.is_empty() {
        writeln!(out, "uses feature sets: {}", c.feature_sets.join(", "))?;
    }
    Ok(())
}

pub(crate) fn stage_changed(s: &v1::StageChanged, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "feature set {} is now {}", s.reference, s.stage)?;
    Ok(())
}

/// A schedule in `featureset show` and `status`: what it is, when it next fires, and whether a
/// run is going or failing.
fn schedule_lines(s: Option<&v1::Schedule>, out: &mut dyn Write) -> Result<(), CliError> {
    let Some(s) = s else {
        return Ok(writeln!(out, "schedule: none")?);
    };
    if !s.enabled {
        return Ok(writeln!(out, "schedule: {} (disabled)", s.definition)?);
    }
    writeln!(out, "schedule: {}", s.definition)?;
    if let Some(next) = s.next_trigger_us {
        let note = if s.cursor_us.is_none() {
            " (starts when a scheduler or `almanac serve` runs)"
        } else {
            ""
        };
        writeln!(out, "next trigger: {}{note}", format_instant(next))?;
    }
    if let Some(job) = &s.running_job {
        writeln!(out, "running: {job} (a due trigger waits for it)")?;
    }
    if s.consecutive_failures > 0 {
        writeln!(
            out,
            "failing: the last {} scheduled run(s) failed; their windows are Incomplete",
            s.consecutive_failures
        )?;
    }
    Ok(())
}

fn trigger_line(t: &v1::Trigger, out: &mut dyn Write) -> Result<(), CliError> {
    let window = t
        .window
        .as_ref()
        .map(|w| {
            format!(
                "[{}, {})",
                format_instant(w.start_us),
                format_instant(w.end_us)
            )
        })
        .unwrap_or_default();
    if t.state == "skipped" {
        writeln!(
            out,
            "  {}  skipped {} trigger(s) up to here (catch-up limit); window {window} not materialized",
            format_instant(t.trigger_us),
            t.skipped
        )?;
    } else {
        writeln!(
            out,
            "  {}  {}  {}  window {window}",
            format_instant(t.trigger_us),
            t.job_id.as_deref().unwrap_or_default(),
            t.job_state.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `featureset schedule`.
pub(crate) fn schedule_set(s: &v1::Schedule, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "feature set {}", s.reference)?;
    schedule_lines(Some(s), out)
}
