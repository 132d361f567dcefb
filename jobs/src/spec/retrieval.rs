//! `feature_retrieval_spec.yaml`: the feature list a model was trained with.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::reader::Reader;
use super::{SpecErrors, finish, parse_yaml, read_text, to_yaml};
use crate::error::Result;

pub const RETRIEVAL_SPEC_FILE_NAME: &str = "feature_retrieval_spec.yaml";
const KIND: &str = "feature retrieval spec";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRetrievalSpec {
    pub serialization_version: u64,
    pub feature_stores: Vec<FeatureStoreEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStoreEntry {
    pub uri: String,
    pub features: Vec<RetrievalFeature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrievalFeature {
    /// `name:version`.
    pub feature_set: String,
    pub feature_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_name: Option<String>,
}

impl FeatureRetrievalSpec {
    pub fn from_yaml(text: &str, file: &Path) -> Result<FeatureRetrievalSpec, SpecErrors> {
        let value = parse_yaml(text, file, KIND)?;
        let mut r = Reader::default();
        let spec = read(&mut r, &value);
        finish(r, spec, file, KIND)
    }

    /// Loads from a folder holding `feature_retrieval_spec.yaml`, or from the file itself.
    pub fn load(path: &Path) -> Result<FeatureRetrievalSpec> {
        let file = if path.is_dir() {
            path.join(RETRIEVAL_SPEC_FILE_NAME)
        } else {
            path.to_path_buf()
        };
        Ok(FeatureRetrievalSpec::from_yaml(&read_text(&file)?, &file)?)
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }
}

fn read(r: &mut Reader, value: &Value) -> Option<FeatureRetrievalSpec> {
    let m = r.mapping(value, "", &["serialization_version", "feature_stores"])?;
    let version = r
        .required(m, "", "serialization_version")
        .and_then(|v| r.count(v, "serialization_version"));
    let stores = r
        .required(m, "", "feature_stores")
        .and_then(|v| r.sequence(v, "feature_stores"))?;
    let mut outputs = BTreeSet::new();
    let stores: Vec<Option<FeatureStoreEntry>> = stores
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("feature_stores[{i}]");
            // `location` and `workspace_id` identify an Azure workspace; accepted, not used.
            let sm = r.mapping(v, &p, &["uri", "location", "workspace_id", "features"])?;
            let uri = r.req_string(sm, &p, "uri");
            let fp = format!("{p}.features");
            let features = r.required(sm, &p, "features").and_then(|v| r.sequence(v, &fp)).and_then(|seq| {
                let items: Vec<Option<RetrievalFeature>> = seq
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        let p = format!("{fp}[{j}]");
                        let m = r.mapping(v, &p, &["feature_set", "feature_name", "output_name"])?;
                        let feature_set = r.req_string(m, &p, "feature_set");
                        if let Some(fs) = &feature_set
                            && !matches!(fs.split_once(':'), Some((n, v)) if !n.is_empty() && !v.is_empty() && !v.contains(':')) {
                                r.error(format!("{p}.feature_set"), format!("expected name:version, found '{fs}'"));
                            }
                        let feature_name = r.req_string(m, &p, "feature_name");
                        let output_name = r.opt_string(m, &p, "output_name");
                        let out = output_name.clone().or_else(|| feature_name.clone());
                        if let Some(out) = out
                            && !outputs.insert(out.clone()) {
                                r.error(
                                    p.clone(),
                                    format!("output name '{out}' is used twice; give one of them an output_name"),
                                );
                            }
                        Some(RetrievalFeature { feature_set: feature_set?, feature_name: feature_name?, output_name })
                    })
                    .collect();
                items.into_iter().collect::<Option<Vec<_>>>()
            });
            Some(FeatureStoreEntry { uri: uri?, features: features? })
        })
        .collect();
    Some(FeatureRetrievalSpec {
        serialization_version: version?,
        feature_stores: stores.into_iter().collect::<Option<Vec<_>>>()?,
    })
}
