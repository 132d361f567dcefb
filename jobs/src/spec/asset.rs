//! Feature set asset yaml: registers a spec with a feature store under a name and version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::reader::{Reader, child};
use super::{SpecErrors, finish, parse_yaml, read_text, to_yaml};
use crate::error::Result;

const KIND: &str = "feature set asset";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    Development,
    Production,
    Archived,
}

impl Stage {
    /// The stage as written in asset files.
    pub fn name(self) -> &'static str {
        Stage::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .unwrap_or("Development")
    }

    pub const ALL: [(&'static str, Stage); 3] = [
        ("Development", Stage::Development),
        ("Production", Stage::Production),
        ("Archived", Stage::Archived),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSetAsset {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// `name:version` references; the managed feature store's `azureml:` prefix is dropped.
    pub entities: Vec<String>,
    pub specification: Specification,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialization_settings: Option<MaterializationSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Specification {
    /// The spec folder, relative to the asset file.
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializationSettings {
    #[serde(default)]
    pub offline_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<RecurrenceSchedule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurrenceSchedule {
    #[serde(rename = "type")]
    pub kind: String,
    pub frequency: Frequency,
    pub interval: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Frequency {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Frequency {
    pub const ALL: [(&'static str, Frequency); 5] = [
        ("Minute", Frequency::Minute),
        ("Hour", Frequency::Hour),
        ("Day", Frequency::Day),
        ("Week", Frequency::Week),
        ("Month", Frequency::Month),
    ];
}

impl FeatureSetAsset {
    pub fn from_yaml(text: &str, file: &Path) -> Result<FeatureSetAsset, SpecErrors> {
        let value = parse_yaml(text, file, KIND)?;
        let mut r = Reader::default();
        let asset = read(&mut r, &value);
        finish(r, asset, file, KIND)
    }

    pub fn load(file: &Path) -> Result<FeatureSetAsset> {
        Ok(FeatureSetAsset::from_yaml(&read_text(file)?, file)?)
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }
}

fn read(r: &mut Reader, value: &Value) -> Option<FeatureSetAsset> {
    let m = r.mapping(
        value,
        "",
        &[
            "$schema",
            "name",
            "version",
            "description",
            "tags",
            "stage",
            "entities",
            "specification",
            "materialization_settings",
        ],
    )?;
    let name = r.req_string(m, "", "name");
    let version = r.req_string(m, "", "version");
    let description = r.opt_string(m, "", "description");
    let tags = r.tags(m, "", "tags");
    let stage = r
        .optional(m, "stage")
        .and_then(|v| r.choice(v, "stage", &Stage::ALL));
    let entities = r.required(m, "", "entities").and_then(|v| r.sequence(v, "entities")).and_then(|seq| {
        if seq.is_empty() {
            r.error("entities", "expected at least one entity reference such as account:1");
        }
        let refs: Vec<Option<String>> = seq
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("entities[{i}]");
                let s = r.string(v, &path)?;
                let s = s.strip_prefix("azureml:").unwrap_or(&s).to_string();
                match s.split_once(':') {
                    Some((n, v)) if !n.is_empty() && !v.is_empty() && !v.contains(':') => Some(s),
                    _ => {
                        r.error(path, format!("expected an entity reference name:version such as account:1, found '{s}'"));
                        None
                    }
                }
            })
            .collect();
        refs.into_iter().collect::<Option<Vec<_>>>()
    });
    let specification = r.required(m, "", "specification").and_then(|v| {
        let sm = r.mapping(v, "specification", &["path"])?;
        r.req_string(sm, "specification", "path")
            .map(|p| Specification {
                path: PathBuf::from(p),
            })
    });
    let materialization_settings = r
        .optional(m, "materialization_settings")
        .and_then(|v| read_materialization(r, v));
    Some(FeatureSetAsset {
        name: name?,
        version: version?,
        description,
        tags,
        stage,
        entities: entities?,
        specification: specification?,
        materialization_settings,
    })
}

fn read_materialization(r: &mut Reader, value: &Value) -> Option<MaterializationSettings> {
    let p = "materialization_settings";
    // `resource` and `spark_configuration` size the managed store's Spark clusters; Almanac's
    // executors are sized by their operator, so the fields are accepted and ignored.
    let m = r.mapping(
        value,
        p,
        &[
            "offline_enabled",
            "online_enabled",
            "schedule",
            "resource",
            "spark_configuration",
            "notification",
        ],
    )?;
    let offline_enabled = r
        .optional(m, "offline_enabled")
        .and_then(|v| r.boolean(v, &child(p, "offline_enabled")));
    let schedule = r.optional(m, "schedule").and_then(|v| {
        let sp = child(p, "schedule");
        let sm = r.mapping(
            v,
            &sp,
            &["type", "frequency", "interval", "start_time", "time_zone"],
        )?;
        let kind = r.req_string(sm, &sp, "type");
        if let Some(k) = &kind
            && k != "recurrence"
        {
            r.error(
                child(&sp, "type"),
                format!("expected recurrence, found '{k}'"),
            );
        }
        let frequency = r
            .required(sm, &sp, "frequency")
            .and_then(|v| r.choice(v, &child(&sp, "frequency"), &Frequency::ALL));
        let interval = r
            .required(sm, &sp, "interval")
            .and_then(|v| r.count(v, &child(&sp, "interval")));
        if interval == Some(0) {
            r.error(child(&sp, "interval"), "an interval must be at least 1");
        }
        let start_time = r.opt_string(sm, &sp, "start_time");
        let time_zone = r.opt_string(sm, &sp, "time_zone");
        Some(RecurrenceSchedule {
            kind: kind?,
            frequency: frequency?,
            interval: interval?,
            start_time,
            time_zone,
        })
    });
    Some(MaterializationSettings {
        offline_enabled: offline_enabled.unwrap_or(false),
        schedule,
    })
}
