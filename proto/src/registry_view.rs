//! The registry as the API shows it. The scheduler answers `RegistryService` with these
//! messages and the embedded CLI prints the same ones, so both modes show the same thing.

use std::path::Path;

use almanac_jobs::registry::{
    Created, EntityRef, FeatureFilter, FeatureInfo, FeatureSetRef, ModelInfo, ModelRef, Registry,
    ScheduleInfo,
};
use almanac_jobs::schedule::ScheduleDef;
use almanac_jobs::spec::{EntitySpec, Stage};
use almanac_jobs::{JobsError, Result};

use crate::{job_message, v1};

/// How many recent jobs a feature set shows.
const RECENT_JOBS: usize = 5;

fn home(registry: &Registry) -> String {
    registry.home().display().to_string()
}

fn entity(e: almanac_jobs::spec::EntitySpec) -> v1::Entity {
    v1::Entity {
        yaml: e.to_yaml(),
        index_columns: e
            .index_columns
            .iter()
            .map(|c| v1::Column {
                name: c.name.clone(),
                r#type: c.data_type.to_string(),
            })
            .collect(),
        name: e.name,
        version: e.version,
        description: e.description,
    }
}

pub fn entities(registry: &Registry) -> Result<v1::EntityList> {
    Ok(v1::EntityList {
        entities: registry.entities()?.into_iter().map(entity).collect(),
        home: home(registry),
    })
}

pub fn get_entity(registry: &Registry, reference: &str) -> Result<v1::Entity> {
    let r: EntityRef = reference.parse()?;
    let e = registry.entity(&r)?.ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "unknown entity {r} in {}",
            registry.home().display()
        ))
    })?;
    Ok(entity(e))
}

pub fn feature_sets(registry: &Registry) -> Result<v1::FeatureSetList> {
    Ok(v1::FeatureSetList {
        feature_sets: registry
            .feature_sets()?
            .into_iter()
            .map(|s| v1::FeatureSetSummary {
                reference: s.reference.to_string(),
                stage: s.stage.name().to_string(),
                features: s.features as u32,
                offline_enabled: s.offline_enabled,
                description: s.description,
                created_at: s.created_at,
            })
            .collect(),
        home: home(registry),
    })
}

fn feature(f: FeatureInfo) -> v1::Feature {
    v1::Feature {
        feature_set: f.feature_set.to_string(),
        name: f.name,
        r#type: f.data_type,
        description: f.description,
    }
}

/// A feature set version; `now` (µs) dates its schedule's next trigger.
pub fn get_feature_set(registry: &Registry, reference: &str, now: i64) -> Result<v1::FeatureSet> {
    let r: FeatureSetRef = reference.parse()?;
    let fs = registry.require_feature_set(&r)?;
    let features = registry
        .features(&FeatureFilter {
            feature_set: Some(r.clone()),
            ..FeatureFilter::default()
        })?
        .into_iter()
        .map(feature)
        .collect();
    Ok(v1::FeatureSet {
        reference: r.to_string(),
        stage: fs.stage.name().to_string(),
        created_at: fs.created_at.clone(),
        offline_enabled: fs.offline_enabled,
        entities: fs.asset.entities.clone(),
        spec: fs.spec.file.display().to_string(),
        features,
        intervals: registry
            .timeline(&r)?
            .intervals()
            .iter()
            .map(|i| v1::DataInterval {
                start_us: i.start,
                end_us: i.end,
                status: i.status.name().to_string(),
            })
            .collect(),
        recent_jobs: registry
            .jobs(Some(&r), RECENT_JOBS)?
            .iter()
            .map(job_message)
            .collect(),
        models: registry
            .models_using(&r)?
            .iter()
            .map(|m| m.to_string())
            .collect(),
        schedule: registry.schedule(&r)?.map(|s| schedule(&s, now)),
    })
}

/// A schedule as the API shows it; `now` (µs) dates the next trigger.
pub fn schedule(s: &ScheduleInfo, now: i64) -> v1::Schedule {
    v1::Schedule {
        reference: s.feature_set.to_string(),
        definition: s.definition.to_string(),
        enabled: s.enabled,
        next_trigger_us: s.next_trigger(now),
        cursor_us: s.cursor,
        running_job: s.running_job().map(|j| j.to_string()),
        consecutive_failures: s.consecutive_failures() as u32,
        recent_triggers: s
            .recent
            .iter()
            .map(|t| v1::Trigger {
                trigger_us: t.trigger,
                state: t.state.name().to_string(),
                job_id: t.job.as_ref().map(|j| j.to_string()),
                job_state: t.job_state.map(|s| s.name().to_string()),
                window: Some(v1::Window {
                    start_us: t.window.start,
                    end_us: t.window.end,
                }),
                skipped: t.skipped,
            })
            .collect(),
    }
}

/// Sets (`def`) or disables (`None`) a schedule, and shows it.
pub fn set_schedule(
    registry: &mut Registry,
    reference: &str,
    def: Option<&ScheduleDef>,
    now: i64,
) -> Result<v1::Schedule> {
    let r: FeatureSetRef = reference.parse()?;
    registry.set_schedule(&r, def)?;
    let s = registry
        .schedule(&r)?
        .ok_or_else(|| JobsError::InvalidInput(format!("feature set {r} has no schedule")))?;
    Ok(schedule(&s, now))
}

/// `tags` are `key=value`.
pub fn features(
    registry: &Registry,
    feature_set: Option<&str>,
    search: Option<&str>,
    tags: &[String],
) -> Result<v1::FeatureList> {
    let tags = tags
        .iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(JobsError::InvalidInput(format!(
                "tag '{t}' is not key=value"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let filter = FeatureFilter {
        feature_set: feature_set
            .filter(|f| !f.is_empty())
            .map(|f| f.parse())
            .transpose()?,
        search: search.filter(|s| !s.is_empty()).map(str::to_string),
        tags,
    };
    Ok(v1::FeatureList {
        features: registry
            .features(&filter)?
            .into_iter()
            .map(feature)
            .collect(),
    })
}

fn model(m: ModelInfo) -> v1::Model {
    v1::Model {
        reference: m.reference.to_string(),
        feature_sets: m.feature_sets.iter().map(|f| f.to_string()).collect(),
        created_at: m.created_at,
        files: m.dir.display().to_string(),
    }
}

pub fn models(registry: &Registry) -> Result<v1::ModelList> {
    Ok(v1::ModelList {
        models: registry.models()?.into_iter().map(model).collect(),
        home: home(registry),
    })
}

pub fn get_model(registry: &Registry, reference: &str) -> Result<v1::Model> {
    let r: ModelRef = reference.parse()?;
    let m = registry.model(&r)?.ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "unknown model {r} in {}",
            registry.home().display()
        ))
    })?;
    Ok(model(m))
}

fn created(registry: &Registry, kind: &str, reference: String, c: Created) -> v1::Created {
    v1::Created {
        kind: kind.to_string(),
        reference,
        new: matches!(c, Created::New),
        home: home(registry),
        feature_sets: Vec::new(),
    }
}

/// Registers the entity file at `path` (checked before the store is touched).
pub fn create_entity(registry: &mut Registry, path: &Path) -> Result<v1::Created> {
    let spec = EntitySpec::load(path)?;
    let c = registry.create_entity(&spec)?;
    Ok(created(
        registry,
        "entity",
        format!("{}:{}", spec.name, spec.version),
        c,
    ))
}

/// Registers the feature set asset at `path` with its spec folder.
pub fn create_feature_set(registry: &mut Registry, path: &Path) -> Result<v1::Created> {
    let (r, c) = registry.create_feature_set(path)?;
    Ok(created(registry, "feature set", r.to_string(), c))
}

/// Registers the model folder at `path` as `name:version`.
pub fn register_model(
    registry: &mut Registry,
    name: &str,
    version: &str,
    path: &Path,
) -> Result<v1::Created> {
    let r = ModelRef::new(name, version);
    let c = registry.register_model(&r, path)?;
    let mut out = created(registry, "model", r.to_string(), c);
    if let Some(m) = registry.model(&r)? {
        out.feature_sets = m.feature_sets.iter().map(|f| f.to_string()).collect();
    }
    Ok(out)
}

pub fn set_stage(
    registry: &mut Registry,
    reference: &str,
    stage: &str,
) -> Result<v1::StageChanged> {
    let r: FeatureSetRef = reference.parse()?;
    let (name, value) = Stage::ALL
        .iter()
        .find(|(n, _)| *n == stage)
        .ok_or_else(|| {
            JobsError::InvalidInput(format!(
                "stage '{stage}': expected Development, Production or Archived"
            ))
        })?;
    registry.set_stage(&r, *value)?;
    Ok(v1::StageChanged {
        reference: r.to_string(),
        stage: name.to_string(),
    })
}

/// A retrieval spec for registered features (`set:version:feature[=name]`, comma lists too).
pub fn retrieval_spec(registry: &Registry, features: &[String]) -> Result<v1::RetrievalSpecFile> {
    let mut requests = Vec::new();
    for f in features {
        requests.extend(almanac_jobs::retrieve::parse_feature_list(f)?);
    }
    let spec = almanac_jobs::retrieve::registered_spec(&requests, registry.home())?;
    Ok(v1::RetrievalSpecFile {
        yaml: spec.to_yaml(),
        features: requests.len() as u32,
    })
}
