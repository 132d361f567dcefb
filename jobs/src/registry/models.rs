//! Registered models and their lineage.
//!
//! A model version is a folder with `feature_retrieval_spec.yaml` at its root: the features it
//! was trained with. Registering copies the folder into the store (`<home>/models/<name>/
//! <version>/`) and records which feature set versions the spec names, so lineage can be read
//! both ways. Like feature sets, model versions are immutable: registering one again succeeds
//! only when the folder's files are identical.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{FeatureSetRef, ModelRef, Registry, db_error, now};
use crate::error::{JobsError, Result};
use crate::spec::{FeatureRetrievalSpec, RETRIEVAL_SPEC_FILE_NAME};

/// One line of `model list`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub reference: ModelRef,
    pub feature_sets: Vec<FeatureSetRef>,
    pub created_at: String,
    /// The stored copy of the model's folder.
    pub dir: PathBuf,
}

/// Every file under `dir`, as (path relative to `dir`, bytes), sorted.
fn files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| JobsError::io("cannot read", &d, e))? {
            let entry = entry.map_err(|e| JobsError::io("cannot read", &d, e))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes =
                    std::fs::read(&path).map_err(|e| JobsError::io("cannot read", &path, e))?;
                out.push((path.strip_prefix(dir).unwrap_or(&path).to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Registry {
    /// Where a model version's files are stored.
    pub fn model_dir(&self, r: &ModelRef) -> PathBuf {
        self.home.join("models").join(&r.name).join(&r.version)
    }

    /// Registers the model in `folder`; its `feature_retrieval_spec.yaml` must name registered
    /// feature sets and features.
    pub fn register_model(&mut self, r: &ModelRef, folder: &Path) -> Result<super::Created> {
        let spec_file = folder.join(RETRIEVAL_SPEC_FILE_NAME);
        if !folder.is_dir() {
            return Err(JobsError::InvalidInput(format!(
                "model folder {} does not exist",
                folder.display()
            )));
        }
        if !spec_file.is_file() {
            return Err(JobsError::InvalidInput(format!(
                "model folder {} has no {RETRIEVAL_SPEC_FILE_NAME} at its root: package the \
                 retrieval spec the model was trained with (e.g. copy the one `almanac retrieve` \
                 wrote next to the training data)",
                folder.display()
            )));
        }
        let spec = FeatureRetrievalSpec::load(&spec_file)?;
        let sets = self.check_retrieval_spec(&spec, &spec_file)?;
        let new_files = files(folder)?;
        let context = format!("registering model {r}");
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT retrieval_spec_yaml FROM models WHERE name = ?1 AND version = ?2",
                params![r.name, r.version],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        let dir = self.model_dir(r);
        if existing.is_some() {
            return if files(&dir)? == new_files {
                Ok(super::Created::Unchanged)
            } else {
                Err(JobsError::InvalidInput(format!(
                    "model {r} is already registered with different files; registered versions \
                     cannot change: give it a new version"
                )))
            };
        }
        // Copy to a staging folder first, so a failed copy leaves no half model.
        let staging = dir.with_file_name(format!(".{}.staging-{}", r.version, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        for (rel, bytes) in &new_files {
            crate::spec::write_atomic(&staging.join(rel), bytes)?;
        }
        if new_files.is_empty() {
            std::fs::create_dir_all(&staging)
                .map_err(|e| JobsError::io("cannot create", &staging, e))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir)
            .map_err(|e| JobsError::io("cannot store the model in", &dir, e))?;
        let result = (|| {
            let tx = self
                .write_transaction()
                .map_err(db_error(context.clone()))?;
            tx.execute(
                "INSERT INTO models (name, version, retrieval_spec_yaml, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![r.name, r.version, spec.to_yaml(), now()],
            )
            .map_err(db_error(context.clone()))?;
            for fs in &sets {
                tx.execute(
                    "INSERT INTO model_feature_sets (model, model_version, feature_set, feature_set_version)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![r.name, r.version, fs.name, fs.version],
                )
                .map_err(db_error(context.clone()))?;
            }
            tx.commit().map_err(db_error(context.clone()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result.map(|()| super::Created::New)
    }

    /// Checks that a retrieval spec names only registered sets and their features; returns the
    /// sets.
    pub fn check_retrieval_spec(
        &self,
        spec: &FeatureRetrievalSpec,
        file: &Path,
    ) -> Result<BTreeSet<FeatureSetRef>> {
        let mut problems = Vec::new();
        let mut sets = BTreeSet::new();
        for store in &spec.feature_stores {
            for f in &store.features {
                let r: FeatureSetRef = f.feature_set.parse()?;
                if r.version == crate::retrieve::LOCAL_VERSION {
                    problems.push(format!(
                        "{r} is a local spec, not a registered feature set: register it with \
                         `almanac featureset create` and name its version"
                    ));
                    continue;
                }
                match self.feature_set(&r)? {
                    None => problems.push(format!("unknown feature set {r}")),
                    Some(fs) => {
                        if !fs
                            .spec
                            .spec
                            .features
                            .iter()
                            .any(|x| x.name == f.feature_name)
                        {
                            problems.push(format!(
                                "feature set {r} has no feature '{}'",
                                f.feature_name
                            ));
                        }
                        sets.insert(r);
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(sets)
        } else {
            problems.dedup();
            Err(JobsError::InvalidInput(format!(
                "{}: {}",
                file.display(),
                problems.join("; ")
            )))
        }
    }

    pub fn model(&self, r: &ModelRef) -> Result<Option<ModelInfo>> {
        Ok(self.models()?.into_iter().find(|m| m.reference == *r))
    }

    /// Registered models with the feature sets they use.
    pub fn models(&self) -> Result<Vec<ModelInfo>> {
        let context = "listing models";
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, created_at FROM models ORDER BY name, version")
            .map_err(db_error(context))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    ModelRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        let links = self.lineage()?;
        Ok(rows
            .into_iter()
            .map(|(reference, created_at)| ModelInfo {
                feature_sets: links
                    .iter()
                    .filter(|(m, _)| *m == reference)
                    .map(|(_, f)| f.clone())
                    .collect(),
                dir: self.model_dir(&reference),
                reference,
                created_at,
            })
            .collect())
    }

    /// The models that use a feature set version.
    pub fn models_using(&self, r: &FeatureSetRef) -> Result<Vec<ModelRef>> {
        self.require_feature_set(r)?;
        Ok(self
            .lineage()?
            .into_iter()
            .filter(|(_, f)| f == r)
            .map(|(m, _)| m)
            .collect())
    }

    fn lineage(&self) -> Result<Vec<(ModelRef, FeatureSetRef)>> {
        let context = "reading lineage";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT model, model_version, feature_set, feature_set_version FROM model_feature_sets
                 ORDER BY model, model_version, feature_set, feature_set_version",
            )
            .map_err(db_error(context))?;
        stmt.query_map([], |row| {
            Ok((
                ModelRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                FeatureSetRef::new(row.get::<_, String>(2)?, row.get::<_, String>(3)?),
            ))
        })
        .map_err(db_error(context))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_error(context))
    }
}
