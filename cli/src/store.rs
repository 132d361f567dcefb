//! `almanac entity | featureset | feature`: the registry of the store at `--home`.

use std::io::Write;
use std::path::Path;

use almanac_jobs::engine::EngineConfig;
use almanac_jobs::registry::{Created, EntityRef, FeatureFilter, FeatureSetRef, Registry};
use almanac_jobs::spec::{EntitySpec, Stage};

use crate::{CliError, EntityCommand, FeatureCommand, FeaturesetCommand};

fn created(what: &str, r: &str, c: Created, home: &Path) -> String {
    match c {
        Created::New => format!("registered {what} {r} in {}", home.display()),
        Created::Unchanged => {
            format!("{what} {r} is already registered with this content; nothing changed")
        }
    }
}

fn stage(s: Stage) -> &'static str {
    match s {
        Stage::Development => "Development",
        Stage::Production => "Production",
        Stage::Archived => "Archived",
    }
}

pub(crate) fn entity(
    home: &Path,
    command: EntityCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        EntityCommand::Create { file } => {
            // The file is checked before the store is touched.
            let spec = EntitySpec::load(&file)?;
            let mut registry = Registry::open(home)?;
            let c = registry.create_entity(&spec)?;
            writeln!(
                out,
                "{}",
                created(
                    "entity",
                    &format!("{}:{}", spec.name, spec.version),
                    c,
                    registry.home()
                )
            )?;
        }
        EntityCommand::List => {
            let registry = Registry::open(home)?;
            let entities = registry.entities()?;
            if entities.is_empty() {
                writeln!(
                    out,
                    "no entities registered in {}",
                    registry.home().display()
                )?;
            }
            for e in entities {
                let columns: Vec<String> = e
                    .index_columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.data_type))
                    .collect();
                writeln!(
                    out,
                    "{}:{}  index: {}  {}",
                    e.name,
                    e.version,
                    columns.join(", "),
                    e.description.unwrap_or_default()
                )?;
            }
        }
        EntityCommand::Show { entity } => {
            let r: EntityRef = entity.parse()?;
            let registry = Registry::open(home)?;
            let e = registry.entity(&r)?.ok_or_else(|| {
                CliError::Usage(format!(
                    "unknown entity {r} in {}",
                    registry.home().display()
                ))
            })?;
            write!(out, "{}", e.to_yaml())?;
        }
    }
    Ok(())
}

pub(crate) async fn featureset(
    config: EngineConfig,
    home: &Path,
    command: FeaturesetCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        FeaturesetCommand::Create { file } => {
            let mut registry = Registry::open(home)?;
            let (r, c) = registry.create_feature_set(&file)?;
            writeln!(
                out,
                "{}",
                created("feature set", &r.to_string(), c, registry.home())
            )?;
        }
        FeaturesetCommand::List => {
            let registry = Registry::open(home)?;
            let sets = registry.feature_sets()?;
            if sets.is_empty() {
                writeln!(
                    out,
                    "no feature sets registered in {}",
                    registry.home().display()
                )?;
            }
            for s in sets {
                writeln!(
                    out,
                    "{}  {}  {} features  offline materialization {}  {}",
                    s.reference,
                    stage(s.stage),
                    s.features,
                    if s.offline_enabled { "on" } else { "off" },
                    s.description.unwrap_or_default()
                )?;
            }
        }
        FeaturesetCommand::Show { feature_set } => {
            let r: FeatureSetRef = feature_set.parse()?;
            let registry = Registry::open(home)?;
            let fs = registry.require_feature_set(&r)?;
            writeln!(out, "feature set {r}")?;
            writeln!(out, "stage: {}", stage(fs.stage))?;
            writeln!(out, "registered: {}", fs.created_at)?;
            writeln!(
                out,
                "offline materialization: {}",
                if fs.offline_enabled { "on" } else { "off" }
            )?;
            writeln!(out, "entities: {}", fs.asset.entities.join(", "))?;
            writeln!(out, "spec: {}", fs.spec.file.display())?;
            writeln!(out, "features:")?;
            for f in &fs.spec.spec.features {
                writeln!(
                    out,
                    "  {} {}  {}",
                    f.name,
                    f.data_type,
                    f.description.clone().unwrap_or_default()
                )?;
            }
        }
        FeaturesetCommand::Sample {
            feature_set,
            start,
            end,
            limit,
            output,
        } => {
            let r: FeatureSetRef = feature_set.parse()?;
            crate::commands::window_args(&start, &end)?;
            let fs = Registry::open(home)?.require_feature_set(&r)?;
            crate::commands::sample_loaded(
                config,
                &fs.spec,
                &format!("feature set {r}"),
                (&start, &end),
                limit,
                output.as_deref(),
                out,
            )
            .await?;
        }
        FeaturesetCommand::Archive { feature_set } => {
            let r: FeatureSetRef = feature_set.parse()?;
            Registry::open(home)?.set_stage(&r, Stage::Archived)?;
            writeln!(out, "feature set {r} is now Archived")?;
        }
        FeaturesetCommand::Restore { feature_set } => {
            let r: FeatureSetRef = feature_set.parse()?;
            Registry::open(home)?.set_stage(&r, Stage::Development)?;
            writeln!(out, "feature set {r} is now Development")?;
        }
    }
    Ok(())
}

pub(crate) fn feature(
    home: &Path,
    command: FeatureCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let FeatureCommand::List {
        featureset,
        search,
        tag,
    } = command;
    let tags = tag
        .iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::Usage(format!("--tag '{t}' is not key=value"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = FeatureFilter {
        feature_set: featureset.map(|f| f.parse()).transpose()?,
        search,
        tags,
    };
    let registry = Registry::open(home)?;
    let features = registry.features(&filter)?;
    for f in &features {
        writeln!(
            out,
            "{}:{}  {}  {}",
            f.feature_set,
            f.name,
            f.data_type,
            f.description.clone().unwrap_or_default()
        )?;
    }
    writeln!(out, "{} feature(s)", features.len())?;
    Ok(())
}
