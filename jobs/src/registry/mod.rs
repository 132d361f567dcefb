//! The feature store registry: entities and feature set versions, in a SQLite database under
//! the store home (`<home>/registry.db`).
//!
//! Registered versions are immutable. Creating a version that exists succeeds only when the
//! content is identical (so re-running a registration script is harmless); anything else is an
//! error that says to use a new version. A feature set's spec is copied into the store
//! (`<home>/featuresets/<name>/<version>/spec/`) with its source path made absolute, so later
//! edits of the user's files do not change what a version means. Only the stage
//! (Development / Production / Archived) changes after creation.

mod jobs;
mod models;
mod refs;
mod schedules;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

pub use jobs::{
    BACKFILL, JobId, JobInfo, RETRIEVAL, RunState, SCHEDULED, TaskInfo, is_materialization,
};
pub use models::ModelInfo;
pub use refs::{EntityRef, FeatureSetRef, ModelRef};
pub use schedules::{ScheduleInfo, Submitted, TriggerInfo, TriggerState};

use crate::error::{JobsError, Result};
use crate::source::resolve_path;
use crate::spec::{ColumnSpec, EntitySpec, FeatureSetAsset, LoadedSpec, Stage};

/// The default store home, relative to the working folder.
pub const DEFAULT_HOME: &str = ".almanac";
const DB_FILE: &str = "registry.db";
const OFFLINE_ROOT: &str = "offline_root";

/// What [`Registry::backup`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    pub files: usize,
    pub bytes: u64,
}

/// Copies the folder `from` (if there is one) to `to`, counting what it wrote.
fn copy_tree(from: &Path, to: &Path, counts: &mut Backup) -> Result<()> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JobsError::io("cannot read", from, e)),
    };
    std::fs::create_dir_all(to).map_err(|e| JobsError::io("cannot create", to, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JobsError::io("cannot read", from, e))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_tree(&source, &target, counts)?;
        } else {
            counts.bytes += std::fs::copy(&source, &target)
                .map_err(|e| JobsError::io("cannot copy", &source, e))?;
            counts.files += 1;
        }
    }
    Ok(())
}

/// Whether a create call added something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// The same content was already registered under this name and version.
    Unchanged,
}

/// A registered feature set version.
#[derive(Debug)]
pub struct RegisteredFeatureSet {
    pub reference: FeatureSetRef,
    pub asset: FeatureSetAsset,
    /// The spec as stored in the registry (source path absolute).
    pub spec: LoadedSpec,
    pub stage: Stage,
    pub offline_enabled: bool,
    pub created_at: String,
}

/// One line of `featureset list`.
#[derive(Debug, Clone)]
pub struct FeatureSetSummary {
    pub reference: FeatureSetRef,
    pub description: Option<String>,
    pub stage: Stage,
    pub offline_enabled: bool,
    pub features: usize,
    pub created_at: String,
}

/// One line of `feature list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureInfo {
    pub feature_set: FeatureSetRef,
    pub name: String,
    pub data_type: String,
    pub description: Option<String>,
}

/// What `feature list` keeps.
#[derive(Debug, Clone, Default)]
pub struct FeatureFilter {
    pub feature_set: Option<FeatureSetRef>,
    /// Case-insensitive text in the feature's name or description.
    pub search: Option<String>,
    /// Tags the feature's set must carry, all of them.
    pub tags: Vec<(String, String)>,
}

fn db_error(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JobsError {
    let context = context.into();
    move |source| JobsError::Registry { context, source }
}

fn stage_name(stage: Stage) -> &'static str {
    stage.name()
}

fn parse_stage(text: &str) -> Stage {
    Stage::ALL
        .iter()
        .find(|(n, _)| *n == text)
        .map(|(_, s)| *s)
        .unwrap_or(Stage::Development)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The registry of one store home.
pub struct Registry {
    conn: Connection,
    home: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("home", &self.home)
            .finish()
    }
}

impl Registry {
    /// Opens (creating if needed) the registry of the store at `home`, bringing its schema up
    /// to date.
    pub fn open(home: &Path) -> Result<Registry> {
        let home =
            std::path::absolute(home).map_err(|e| JobsError::io("cannot resolve", home, e))?;
        std::fs::create_dir_all(&home)
            .map_err(|e| JobsError::io("cannot create the store home", &home, e))?;
        let file = home.join(DB_FILE);
        let context = format!("registry {}", file.display());
        let mut conn = Connection::open(&file).map_err(db_error(context.clone()))?;
        // Concurrent CLI runs share the file: wait for a writer rather than fail at once.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_error(context.clone()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error(context.clone()))?;
        migrate(&mut conn, &context)?;
        Ok(Registry { conn, home })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Backs the store up into `dest`, a new or empty folder: a consistent snapshot of the
    /// registry database, taken while other processes may be writing to it, and the spec and
    /// model files registered versions point to. Those files never change once registered, so
    /// copying them after the snapshot is safe. The offline store's tables are not copied:
    /// they live in their own storage (see the operator guide).
    pub fn backup(&self, dest: &Path) -> Result<Backup> {
        if std::fs::read_dir(dest).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(JobsError::InvalidInput(format!(
                "the backup folder {} is not empty; give a new or empty folder",
                dest.display()
            )));
        }
        std::fs::create_dir_all(dest)
            .map_err(|e| JobsError::io("cannot create the backup folder", dest, e))?;
        let file = dest.join(DB_FILE);
        self.conn
            .execute("VACUUM INTO ?1", [file.to_string_lossy()])
            .map_err(db_error(format!(
                "writing a snapshot of the registry to {}",
                file.display()
            )))?;
        let mut backup = Backup {
            files: 1,
            bytes: std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
        };
        for folder in ["featuresets", "models"] {
            copy_tree(&self.home.join(folder), &dest.join(folder), &mut backup)?;
        }
        Ok(backup)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db_error(format!("reading setting {key}")))
    }

    /// Where the offline store's tables are: the recorded root, else `<home>/offline/`.
    pub fn offline_root(&self) -> Result<url::Url> {
        let text = match self.setting(OFFLINE_ROOT)? {
            Some(t) => t,
            None => url::Url::from_directory_path(self.home.join("offline"))
                .map_err(|_| {
                    JobsError::InvalidInput(format!(
                        "{} is not a usable folder",
                        self.home.display()
                    ))
                })?
                .to_string(),
        };
        url::Url::parse(&text).map_err(|e| {
            JobsError::InvalidInput(format!("the offline store root '{text}' is not a URL: {e}"))
        })
    }

    /// Records where the offline store's tables are (a folder or object-store URL ending in
    /// a folder). A store keeps one root: giving another later is an error, since its tables
    /// would seem to vanish.
    pub fn set_offline_root(&mut self, root: &str) -> Result<url::Url> {
        let mut url = if root.contains("://") {
            url::Url::parse(root).map_err(|e| {
                JobsError::InvalidInput(format!("--offline-root '{root}' is not a URL: {e}"))
            })?
        } else {
            let dir =
                std::path::absolute(root).map_err(|e| JobsError::io("cannot resolve", root, e))?;
            url::Url::from_directory_path(&dir).map_err(|_| {
                JobsError::InvalidInput(format!("--offline-root {root} is not a usable folder"))
            })?
        };
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let context = "recording the offline store root";
        match self.setting(OFFLINE_ROOT)? {
            Some(r) if r == url.as_str() => Ok(url),
            Some(r) => Err(JobsError::InvalidInput(format!(
                "the store at {} keeps its offline tables at {r}; --offline-root {url} differs \
                 (a store has one offline root)",
                self.home.display()
            ))),
            None => {
                self.conn
                    .execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                        params![OFFLINE_ROOT, url.as_str()],
                    )
                    .map_err(db_error(context))?;
                Ok(url)
            }
        }
    }

    /// Where a feature set version's spec is stored.
    pub fn spec_dir(&self, r: &FeatureSetRef) -> PathBuf {
        self.home
            .join("featuresets")
            .join(&r.name)
            .join(&r.version)
            .join("spec")
    }

    /// Registers an entity.
    pub fn create_entity(&mut self, entity: &EntitySpec) -> Result<Created> {
        let r = EntityRef::new(&entity.name, &entity.version);
        let yaml = entity.to_yaml();
        let context = format!("registering entity {r}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT spec_yaml FROM entities WHERE name = ?1 AND version = ?2",
                params![r.name, r.version],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        if let Some(existing) = existing {
            return if existing == yaml {
                Ok(Created::Unchanged)
            } else {
                Err(JobsError::InvalidInput(format!(
                    "entity {r} is already registered with different content; registered versions \
                     cannot change: give it a new version"
                )))
            };
        }
        tx.execute(
            "INSERT INTO entities (name, version, spec_yaml, description, stage, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.name,
                r.version,
                yaml,
                entity.description,
                stage_name(entity.stage.unwrap_or(Stage::Development)),
                now()
            ],
        )
        .map_err(db_error(context.clone()))?;
        insert_tags(&tx, "entity", &r.name, &r.version, &entity.tags, &context)?;
        tx.commit().map_err(db_error(context))?;
        Ok(Created::New)
    }

    pub fn entity(&self, r: &EntityRef) -> Result<Option<EntitySpec>> {
        let yaml: Option<String> = self
            .conn
            .query_row(
                "SELECT spec_yaml FROM entities WHERE name = ?1 AND version = ?2",
                params![r.name, r.version],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error(format!("reading entity {r}")))?;
        yaml.map(|y| {
            EntitySpec::from_yaml(&y, Path::new(&format!("registry entity {r}")))
                .map_err(JobsError::from)
        })
        .transpose()
    }

    pub fn entities(&self) -> Result<Vec<EntitySpec>> {
        let context = "listing entities";
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, spec_yaml FROM entities ORDER BY name, version")
            .map_err(db_error(context))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        rows.into_iter()
            .map(|(n, v, y)| {
                EntitySpec::from_yaml(&y, Path::new(&format!("registry entity {n}:{v}")))
                    .map_err(JobsError::from)
            })
            .collect()
    }

    /// Registers the feature set version an asset file describes: its spec must validate, its
    /// entities must be registered and their index columns must be the spec's.
    pub fn create_feature_set(&mut self, asset_file: &Path) -> Result<(FeatureSetRef, Created)> {
        let asset = FeatureSetAsset::load(asset_file)?;
        let r = FeatureSetRef::new(&asset.name, &asset.version);
        if let Some(m) = &asset.materialization_settings
            && let Some(schedule) = &m.schedule
        {
            // A schedule that could never trigger is refused now, not at its first trigger.
            let field = format!(
                "{}: materialization_settings.schedule",
                asset_file.display()
            );
            crate::schedule::Schedule::from_recurrence(schedule, &field)?;
            if !m.offline_enabled {
                return Err(JobsError::InvalidInput(format!(
                    "{field}: a schedule materializes into the offline store, but \
                     offline_enabled is false; set materialization_settings.offline_enabled: true \
                     or remove the schedule"
                )));
            }
        }
        let base = asset_file.parent().unwrap_or(Path::new("."));
        let spec_path = base.join(&asset.specification.path);
        let loaded = LoadedSpec::load(&spec_path).map_err(|e| {
            JobsError::InvalidInput(format!(
                "{}: specification.path {}: {e}",
                asset_file.display(),
                asset.specification.path.display()
            ))
        })?;
        let mut spec = loaded.spec.clone();
        spec.source.path = resolve_path(&spec.source.path, &loaded.dir)?.0;
        self.check_entities(asset_file, &asset, &spec.index_columns)?;

        let asset_yaml = asset.to_yaml();
        let spec_yaml = spec.to_yaml();
        let context = format!("registering feature set {r}");
        let existing: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT asset_yaml, spec_yaml FROM feature_sets WHERE name = ?1 AND version = ?2",
                params![r.name, r.version],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        if let Some((a, s)) = existing {
            return if a == asset_yaml && s == spec_yaml {
                Ok((r, Created::Unchanged))
            } else {
                Err(JobsError::InvalidInput(format!(
                    "feature set {r} is already registered with different content (asset or spec); \
                     registered versions cannot change: give it a new version"
                )))
            };
        }
        let spec_dir = self.spec_dir(&r);
        spec.write_to_dir(&spec_dir)?;
        let result = self.insert_feature_set(&r, &asset, &asset_yaml, &spec, &spec_yaml, &context);
        if result.is_err() {
            // Nothing references the copy: do not leave it behind.
            let _ = std::fs::remove_dir_all(spec_dir.parent().unwrap_or(&spec_dir));
        }
        result.map(|()| (r, Created::New))
    }

    fn check_entities(
        &self,
        asset_file: &Path,
        asset: &FeatureSetAsset,
        index_columns: &[ColumnSpec],
    ) -> Result<()> {
        let mut problems = Vec::new();
        let mut columns: BTreeMap<String, String> = BTreeMap::new();
        for e in &asset.entities {
            let r: EntityRef = e.parse()?;
            match self.entity(&r)? {
                Some(entity) => {
                    for c in entity.index_columns {
                        columns.insert(c.name, c.data_type.to_string());
                    }
                }
                None => {
                    let known: Vec<String> = self
                        .entities()?
                        .iter()
                        .map(|e| format!("{}:{}", e.name, e.version))
                        .collect();
                    problems.push(format!(
                        "entities: unknown entity {r}; registered entities: {}",
                        if known.is_empty() {
                            "none (create one with `almanac entity create --file`)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
        }
        let spec_columns: BTreeMap<String, String> = index_columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.to_string()))
            .collect();
        if problems.is_empty() && spec_columns != columns {
            let show = |m: &BTreeMap<String, String>| {
                m.iter()
                    .map(|(n, t)| format!("{n} {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            problems.push(format!(
                "the spec's index columns ({}) differ from its entities' ({})",
                show(&spec_columns),
                show(&columns)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(JobsError::InvalidInput(format!(
                "{}: {}",
                asset_file.display(),
                problems.join("; ")
            )))
        }
    }

    fn insert_feature_set(
        &mut self,
        r: &FeatureSetRef,
        asset: &FeatureSetAsset,
        asset_yaml: &str,
        spec: &crate::spec::FeatureSetSpec,
        spec_yaml: &str,
        context: &str,
    ) -> Result<()> {
        let tx = self.write_transaction().map_err(db_error(context))?;
        let offline = asset
            .materialization_settings
            .as_ref()
            .is_some_and(|m| m.offline_enabled);
        tx.execute(
            "INSERT INTO feature_sets
               (name, version, asset_yaml, spec_yaml, description, stage, offline_enabled, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.name,
                r.version,
                asset_yaml,
                spec_yaml,
                asset.description,
                stage_name(asset.stage.unwrap_or(Stage::Development)),
                offline,
                now()
            ],
        )
        .map_err(db_error(context))?;
        for e in &asset.entities {
            let e: EntityRef = e.parse()?;
            tx.execute(
                "INSERT INTO feature_set_entities (feature_set, feature_set_version, entity, entity_version)
                 VALUES (?1, ?2, ?3, ?4)",
                params![r.name, r.version, e.name, e.version],
            )
            .map_err(db_error(context))?;
        }
        for (i, f) in spec.features.iter().enumerate() {
            tx.execute(
                "INSERT INTO features (feature_set, feature_set_version, position, name, type, description)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.name, r.version, i as i64, f.name, f.data_type.to_string(), f.description],
            )
            .map_err(db_error(context))?;
        }
        insert_tags(
            &tx,
            "feature_set",
            &r.name,
            &r.version,
            &asset.tags,
            context,
        )?;
        if let Some(schedule) = asset
            .materialization_settings
            .as_ref()
            .and_then(|m| m.schedule.as_ref())
        {
            let def = crate::schedule::ScheduleDef::from_recurrence(schedule);
            schedules::upsert_schedule(&tx, r, &def, context)?;
        }
        tx.commit().map_err(db_error(context))
    }

    /// A registered feature set version, `None` if there is none.
    pub fn feature_set(&self, r: &FeatureSetRef) -> Result<Option<RegisteredFeatureSet>> {
        let context = format!("reading feature set {r}");
        let row: Option<(String, String, bool, String)> = self
            .conn
            .query_row(
                "SELECT asset_yaml, stage, offline_enabled, created_at FROM feature_sets
                 WHERE name = ?1 AND version = ?2",
                params![r.name, r.version],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(db_error(context))?;
        let Some((asset_yaml, stage, offline_enabled, created_at)) = row else {
            return Ok(None);
        };
        let asset = FeatureSetAsset::from_yaml(
            &asset_yaml,
            Path::new(&format!("registry feature set {r}")),
        )?;
        let spec = LoadedSpec::load(&self.spec_dir(r))?;
        Ok(Some(RegisteredFeatureSet {
            reference: r.clone(),
            asset,
            spec,
            stage: parse_stage(&stage),
            offline_enabled,
            created_at,
        }))
    }

    /// Like [`Registry::feature_set`], with an error naming the registered sets if absent.
    pub fn require_feature_set(&self, r: &FeatureSetRef) -> Result<RegisteredFeatureSet> {
        if let Some(fs) = self.feature_set(r)? {
            return Ok(fs);
        }
        let known: Vec<String> = self
            .feature_sets()?
            .iter()
            .map(|s| s.reference.to_string())
            .collect();
        Err(JobsError::InvalidInput(format!(
            "unknown feature set {r} in the store at {}; registered feature sets: {}",
            self.home.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    pub fn feature_sets(&self) -> Result<Vec<FeatureSetSummary>> {
        let context = "listing feature sets";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.name, s.version, s.description, s.stage, s.offline_enabled, s.created_at,
                        (SELECT COUNT(*) FROM features f
                          WHERE f.feature_set = s.name AND f.feature_set_version = s.version)
                   FROM feature_sets s ORDER BY s.name, s.version",
            )
            .map_err(db_error(context))?;
        stmt.query_map([], |row| {
            Ok(FeatureSetSummary {
                reference: FeatureSetRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                description: row.get(2)?,
                stage: parse_stage(&row.get::<_, String>(3)?),
                offline_enabled: row.get(4)?,
                created_at: row.get(5)?,
                features: row.get::<_, i64>(6)? as usize,
            })
        })
        .map_err(db_error(context))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_error(context))
    }

    /// Moves a feature set version to another stage (archive, restore).
    pub fn set_stage(&mut self, r: &FeatureSetRef, stage: Stage) -> Result<()> {
        self.require_feature_set(r)?;
        self.conn
            .execute(
                "UPDATE feature_sets SET stage = ?3 WHERE name = ?1 AND version = ?2",
                params![r.name, r.version, stage_name(stage)],
            )
            .map_err(db_error(format!("changing the stage of {r}")))?;
        Ok(())
    }

    /// Features of registered sets, filtered.
    pub fn features(&self, filter: &FeatureFilter) -> Result<Vec<FeatureInfo>> {
        let context = "listing features";
        if let Some(r) = &filter.feature_set {
            self.require_feature_set(r)?;
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT feature_set, feature_set_version, name, type, description FROM features
                 ORDER BY feature_set, feature_set_version, position",
            )
            .map_err(db_error(context))?;
        let all = stmt
            .query_map([], |row| {
                Ok(FeatureInfo {
                    feature_set: FeatureSetRef::new(
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                    ),
                    name: row.get(2)?,
                    data_type: row.get(3)?,
                    description: row.get(4)?,
                })
            })
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        let tags = self.tags("feature_set")?;
        let search = filter.search.as_ref().map(|s| s.to_lowercase());
        Ok(all
            .into_iter()
            .filter(|f| {
                filter
                    .feature_set
                    .as_ref()
                    .is_none_or(|r| *r == f.feature_set)
            })
            .filter(|f| {
                search.as_ref().is_none_or(|s| {
                    f.name.to_lowercase().contains(s)
                        || f.description
                            .as_ref()
                            .is_some_and(|d| d.to_lowercase().contains(s))
                })
            })
            .filter(|f| {
                let set_tags = tags.get(&f.feature_set);
                filter
                    .tags
                    .iter()
                    .all(|(k, v)| set_tags.is_some_and(|t| t.get(k).is_some_and(|x| x == v)))
            })
            .collect())
    }

    fn tags(&self, kind: &str) -> Result<BTreeMap<FeatureSetRef, BTreeMap<String, String>>> {
        let context = "reading tags";
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, tag, value FROM tags WHERE kind = ?1")
            .map_err(db_error(context))?;
        let rows = stmt
            .query_map([kind], |row| {
                Ok((
                    FeatureSetRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        let mut out: BTreeMap<FeatureSetRef, BTreeMap<String, String>> = BTreeMap::new();
        for (r, k, v) in rows {
            out.entry(r).or_default().insert(k, v);
        }
        Ok(out)
    }
}

fn insert_tags(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    name: &str,
    version: &str,
    tags: &BTreeMap<String, String>,
    context: &str,
) -> Result<()> {
    for (k, v) in tags {
        tx.execute(
            "INSERT INTO tags (kind, name, version, tag, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, name, version, k, v],
        )
        .map_err(db_error(context))?;
    }
    Ok(())
}

/// Applies the migrations this build knows and the database has not seen, each in its own
/// transaction.
impl Registry {
    /// A transaction that takes the write lock at its start. SQLite cannot upgrade a read
    /// transaction to a write one while another connection writes (it fails at once with
    /// "database is locked", busy timeout or not); starting as a writer waits its turn instead.
    /// A scheduler's concurrent submissions and task ends depend on this.
    fn write_transaction(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }
}

fn migrate(conn: &mut Connection, context: &str) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
        )",
    )
    .map_err(db_error(context))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(db_error(context))?;
    let newest = schema::MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > newest {
        return Err(JobsError::InvalidInput(format!(
            "{context} has schema version {current}, written by a newer Almanac; this build knows \
             versions up to {newest}: upgrade almanac"
        )));
    }
    for (version, sql) in schema::MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        // Immediate: two processes opening a new store at once take turns, and the second
        // finds the migration applied.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error(context))?;
        let applied: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
                params![version],
                |row| row.get(0),
            )
            .map_err(db_error(context))?;
        if applied > 0 {
            continue;
        }
        tx.execute_batch(sql).map_err(db_error(context))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now()],
        )
        .map_err(db_error(context))?;
        tx.commit().map_err(db_error(context))?;
        tracing::info!(version, "registry schema migrated");
    }
    Ok(())
}
