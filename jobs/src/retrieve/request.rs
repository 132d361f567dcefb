//! What a retrieval asks for: features by `set:version:feature`, resolved against the
//! feature sets this run can see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{JobsError, Result};
use crate::registry::{FeatureSetRef, Registry};
use crate::spec::{FeatureRetrievalSpec, FeatureStoreEntry, LoadedSpec, RetrievalFeature};

/// The version under which `--local NAME=DIR` specs are known.
pub const LOCAL_VERSION: &str = "local";

/// One requested feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRequest {
    pub set: String,
    pub version: String,
    pub feature: String,
    pub output_name: Option<String>,
}

impl FeatureRequest {
    /// Parses `set:version:feature`, optionally followed by `=output_name`.
    pub fn parse(text: &str) -> Result<FeatureRequest> {
        let text = text.trim();
        let (reference, output_name) = match text.split_once('=') {
            Some((r, o)) => (r, Some(o.trim().to_string())),
            None => (text, None),
        };
        let parts: Vec<&str> = reference.split(':').map(str::trim).collect();
        match (parts.as_slice(), &output_name) {
            ([set, version, feature], out)
                if !set.is_empty()
                    && !version.is_empty()
                    && !feature.is_empty()
                    && out.as_ref().is_none_or(|o| !o.is_empty()) =>
            {
                Ok(FeatureRequest {
                    set: set.to_string(),
                    version: version.to_string(),
                    feature: feature.to_string(),
                    output_name,
                })
            }
            _ => Err(JobsError::InvalidInput(format!(
                "'{text}' is not a feature reference; expected set:version:feature, \
                 optionally with =output_name (e.g. transactions:local:transaction_amount_7d_sum)"
            ))),
        }
    }

    pub fn set_ref(&self) -> String {
        format!("{}:{}", self.set, self.version)
    }

    pub fn output(&self) -> &str {
        self.output_name.as_deref().unwrap_or(&self.feature)
    }
}

impl std::fmt::Display for FeatureRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.set, self.version, self.feature)
    }
}

/// Parses a comma-separated `--features` list.
pub fn parse_feature_list(text: &str) -> Result<Vec<FeatureRequest>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(FeatureRequest::parse)
        .collect()
}

/// Parses `--local NAME=DIR`.
pub fn parse_local(text: &str) -> Result<(String, PathBuf)> {
    match text.split_once('=') {
        Some((name, dir)) if !name.trim().is_empty() && !dir.trim().is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(dir.trim())))
        }
        _ => Err(JobsError::InvalidInput(format!(
            "'{text}' is not a local feature set; expected NAME=DIR, e.g. transactions=featuresets/transactions/spec"
        ))),
    }
}

/// The requests of a `feature_retrieval_spec.yaml`. Entries of local sets written by
/// `almanac retrieve` carry their spec folder as a `file://` uri; those folders are added to
/// `local` unless the caller already named the set.
pub fn requests_from_spec(
    spec: &FeatureRetrievalSpec,
    local: &mut BTreeMap<String, PathBuf>,
) -> Result<Vec<FeatureRequest>> {
    let mut out = Vec::new();
    for store in &spec.feature_stores {
        for f in &store.features {
            let (set, version) = f
                .feature_set
                .split_once(':')
                .expect("the spec reader checked name:version");
            if version == LOCAL_VERSION
                && !local.contains_key(set)
                && let Some(dir) = store.uri.strip_prefix("file://")
            {
                local.insert(set.to_string(), PathBuf::from(dir));
            }
            out.push(FeatureRequest {
                set: set.to_string(),
                version: version.to_string(),
                feature: f.feature_name.clone(),
                output_name: f.output_name.clone(),
            });
        }
    }
    Ok(out)
}

/// A feature set taking part in a retrieval, with the requests for it in request order.
#[derive(Debug)]
pub struct ResolvedSet {
    pub reference: String,
    pub loaded: LoadedSpec,
    /// Where the spec came from, written as the store `uri` of the output's retrieval spec.
    pub uri: String,
    pub requests: Vec<FeatureRequest>,
    /// For registered sets with offline materialization: their table and data intervals.
    pub offline: Option<OfflineSource>,
}

/// Where a registered set's materialized rows are.
#[derive(Debug, Clone)]
pub struct OfflineSource {
    pub table: url::Url,
    pub timeline: crate::materialize::Timeline,
}

/// Resolves requests to feature sets and checks features and output names.
///
/// Every problem is reported at once, with what is available.
pub fn resolve(
    requests: &[FeatureRequest],
    local: &BTreeMap<String, PathBuf>,
    home: Option<&Path>,
) -> Result<Vec<ResolvedSet>> {
    if requests.is_empty() {
        return Err(JobsError::InvalidInput(
            "no features requested: give --features set:version:feature,... or --spec DIR"
                .to_string(),
        ));
    }
    let mut problems = Vec::new();
    let mut sets: Vec<ResolvedSet> = Vec::new();
    let mut failed_sets: Vec<String> = Vec::new();
    let mut outputs: BTreeMap<String, &FeatureRequest> = BTreeMap::new();
    // Opened on first use: a retrieval of local sets only needs no store.
    let mut registry: Option<Registry> = None;
    for request in requests {
        if let Some(previous) = outputs.insert(request.output().to_string(), request) {
            problems.push(format!(
                "output name '{}' is requested twice ({previous} and {request}); rename one \
                 with =NAME in --features or output_name in the retrieval spec",
                request.output()
            ));
        }
        let reference = request.set_ref();
        if failed_sets.contains(&reference) {
            continue;
        }
        if !sets.iter().any(|s| s.reference == reference) {
            match load_set(request, local, home, &mut registry) {
                Ok((loaded, uri, offline)) => sets.push(ResolvedSet {
                    reference: reference.clone(),
                    loaded,
                    uri,
                    requests: Vec::new(),
                    offline,
                }),
                Err(message) => {
                    problems.push(message);
                    failed_sets.push(reference);
                    continue;
                }
            }
        }
        let set = sets
            .iter_mut()
            .find(|s| s.reference == reference)
            .expect("just added");
        let known: Vec<&str> = set
            .loaded
            .spec
            .features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        if !known.contains(&request.feature.as_str()) {
            problems.push(format!(
                "feature set {reference} has no feature '{}'; its features are: {}",
                request.feature,
                known.join(", ")
            ));
            continue;
        }
        set.requests.push(request.clone());
    }
    if !problems.is_empty() {
        return Err(JobsError::InvalidInput(problems.join("\n")));
    }
    Ok(sets)
}

fn load_set(
    request: &FeatureRequest,
    local: &BTreeMap<String, PathBuf>,
    home: Option<&Path>,
    registry: &mut Option<Registry>,
) -> std::result::Result<(LoadedSpec, String, Option<OfflineSource>), String> {
    if request.version != LOCAL_VERSION {
        let Some(home) = home else {
            return Err(format!(
                "unknown feature set {}: no feature store is given for registered sets",
                request.set_ref()
            ));
        };
        if registry.is_none() {
            *registry = Some(Registry::open(home).map_err(|e| e.to_string())?);
        }
        let registry = registry.as_ref().expect("just opened");
        let r = FeatureSetRef::new(&request.set, &request.version);
        let fs = registry.require_feature_set(&r).map_err(|e| {
            let locals = known_locals(local);
            if locals.is_empty() {
                e.to_string()
            } else {
                format!("{e}; local sets: {locals}")
            }
        })?;
        let uri = format!("file://{}", absolute(registry.home()).display());
        let offline = if fs.offline_enabled {
            Some(OfflineSource {
                table: registry
                    .offline_root()
                    .and_then(|root| crate::offline::table_url(&root, &r))
                    .map_err(|e| e.to_string())?,
                timeline: registry.timeline(&r).map_err(|e| e.to_string())?,
            })
        } else {
            None
        };
        return Ok((fs.spec, uri, offline));
    }
    let Some(dir) = local.get(&request.set) else {
        let locals = known_locals(local);
        return Err(if locals.is_empty() {
            format!(
                "unknown feature set {}; no local sets are given: pass --local NAME=DIR for a spec folder",
                request.set_ref()
            )
        } else {
            format!(
                "unknown feature set {}; known feature sets: {locals}",
                request.set_ref()
            )
        });
    };
    let loaded =
        LoadedSpec::load(dir).map_err(|e| format!("feature set {}: {e}", request.set_ref()))?;
    let uri = format!("file://{}", absolute(&loaded.dir).display());
    Ok((loaded, uri, None))
}

fn known_locals(local: &BTreeMap<String, PathBuf>) -> String {
    local
        .keys()
        .map(|n| format!("{n}:{LOCAL_VERSION}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The retrieval spec of what was retrieved: one store entry per feature set.
pub fn used_spec(sets: &[ResolvedSet]) -> FeatureRetrievalSpec {
    FeatureRetrievalSpec {
        serialization_version: 2,
        feature_stores: sets
            .iter()
            .map(|s| FeatureStoreEntry {
                uri: s.uri.clone(),
                features: s
                    .requests
                    .iter()
                    .map(|r| RetrievalFeature {
                        feature_set: r.set_ref(),
                        feature_name: r.feature.clone(),
                        output_name: r.output_name.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The retrieval spec of registered features, for `almanac retrieval-spec create`: only
/// registered sets may go in it, so it means the same thing wherever the model goes.
pub fn registered_spec(requests: &[FeatureRequest], home: &Path) -> Result<FeatureRetrievalSpec> {
    let local: Vec<String> = requests
        .iter()
        .filter(|r| r.version == LOCAL_VERSION)
        .map(|r| r.to_string())
        .collect();
    if !local.is_empty() {
        return Err(JobsError::InvalidInput(format!(
            "{} name(s) a local spec; a retrieval spec holds registered feature sets only: \
             register the set with `almanac featureset create` and name its version",
            local.join(", ")
        )));
    }
    let sets = resolve(requests, &BTreeMap::new(), Some(home))?;
    Ok(used_spec(&sets))
}
