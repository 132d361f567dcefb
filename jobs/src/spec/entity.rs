//! Entity yaml: the named set of index columns feature sets join on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::reader::Reader;
use super::{ColumnSpec, SpecErrors, Stage, finish, parse_yaml, read_text, to_yaml};
use crate::error::Result;

const KIND: &str = "entity";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySpec {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub index_columns: Vec<ColumnSpec>,
}

impl EntitySpec {
    pub fn from_yaml(text: &str, file: &Path) -> Result<EntitySpec, SpecErrors> {
        let value = parse_yaml(text, file, KIND)?;
        let mut r = Reader::default();
        let entity = read(&mut r, &value);
        finish(r, entity, file, KIND)
    }

    pub fn load(file: &Path) -> Result<EntitySpec> {
        Ok(EntitySpec::from_yaml(&read_text(file)?, file)?)
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }
}

fn read(r: &mut Reader, value: &serde_yaml::Value) -> Option<EntitySpec> {
    let m = r.mapping(
        value,
        "",
        &[
            "$schema",
            "name",
            "version",
            "description",
            "stage",
            "tags",
            "index_columns",
        ],
    )?;
    let name = r.req_string(m, "", "name");
    let version = r.req_string(m, "", "version");
    let description = r.opt_string(m, "", "description");
    let stage = r
        .optional(m, "stage")
        .and_then(|v| r.choice(v, "stage", &Stage::ALL));
    let tags = r.tags(m, "", "tags");
    let index_columns = super::feature_set_columns(r, m, "index_columns");
    Some(EntitySpec {
        name: name?,
        version: version?,
        description,
        stage,
        tags,
        index_columns: index_columns?,
    })
}
