//! The engine: a Ballista session configured the Almanac way.
//!
//! Every query Almanac runs goes through Ballista. Without a cluster, [`Engine::embedded`]
//! starts Ballista's scheduler and an executor inside this process (its "standalone" mode), so
//! plans are serialized and run exactly as they will be on remote executors. The session state
//! built by [`almanac_session_state`] is the one the scheduler and executors use too: it carries
//! Almanac's functions, object stores and memory pool.

use std::num::NonZeroUsize;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
};
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{EngineResultExt, Result};
use crate::planner::AlmanacQueryPlanner;
use crate::storage::AlmanacObjectStores;
use crate::timestamp::{ParseTimestamp, TimestampCheck};

/// How the embedded engine is sized.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Task slots of the embedded executor; default: the machine's cores.
    pub parallelism: usize,
    /// Partitions a query is split into.
    pub target_partitions: usize,
    /// Memory pool size in bytes shared by all running queries (a fair pool: each spilling
    /// operator gets an equal share and spills beyond it).
    /// `None`: unbounded.
    pub memory_limit: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        EngineConfig {
            parallelism: cores,
            target_partitions: cores,
            memory_limit: None,
        }
    }
}

/// The runtime every Almanac process uses: Almanac's object stores (credentials from the
/// environment) and no listing cache. Executors add their memory pool and spill folder.
pub fn runtime_builder() -> RuntimeEnvBuilder {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(AlmanacObjectStores::new()))
        // DataFusion caches folder listings forever by default; a long-running engine would
        // then never see files that land in a source after its first read.
        .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
}

/// The session state every Almanac process uses: client, scheduler and executors.
pub fn almanac_session_state(config: &EngineConfig) -> Result<SessionState> {
    let session_config = SessionConfig::new_with_ballista()
        .with_target_partitions(config.target_partitions.max(1))
        .with_ballista_standalone_parallelism(config.parallelism.max(1))
        // Feature store columns are camelCase (accountID); user SQL must match names as written.
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
        // Almanac's jobs are planned once, statically: adaptive re-planning rewrites stages
        // between runs, and its recovery from a lost executor is unproven (DESIGN.md §2).
        .set_bool(
            ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED,
            false,
        )
        .with_information_schema(false)
        .with_ballista_logical_extension_codec(crate::codec::logical_codec())
        .with_ballista_physical_extension_codec(crate::codec::physical_codec());
    let mut runtime = runtime_builder();
    if let Some(limit) = config.memory_limit {
        // A fair pool, as Ballista's executors use: each spilling operator (a sort per
        // partition, ...) gets an equal share and spills past it. A greedy pool let the first
        // partition's sort take nearly all of it and the second partition's merge then failed
        // (a 90-day backfill under 128 MiB). Tracking names the top consumers in errors.
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(5).expect("5 is not zero"),
        );
        runtime = runtime.with_memory_pool(Arc::new(pool));
    }
    let runtime = runtime
        .build_arc()
        .context(|| "cannot set up the engine's runtime".to_string())?;
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(session_config)
        .with_runtime_env(runtime)
        .with_scalar_functions(vec![ParseTimestamp::udf(), TimestampCheck::udf()])
        // The scheduler plans with this state; the client swaps in Ballista's planner.
        .with_query_planner(Arc::new(AlmanacQueryPlanner))
        .build();
    Ok(state)
}

/// What a cluster looked like when a query started: see [`ExecutorLossFence`].
#[derive(Debug, Clone)]
pub struct FenceMark {
    /// Executors removed from the cluster so far.
    pub removals: u64,
    /// Executors registered then.
    pub executors: Vec<String>,
}

/// Tells whether the cluster lost an executor since a mark.
///
/// Ballista recovers a query from a lost executor by rerunning stages, and in 55 a reader
/// stage can then read a map output twice (a partition keeps the surviving location of its
/// first run and gains the rerun's), silently duplicating input rows. Almanac therefore never
/// commits or publishes the result of a query that ran while an executor was lost: the task
/// attempt fails and is retried whole.
#[async_trait::async_trait]
pub trait ExecutorLossFence: Send + Sync {
    async fn mark(&self) -> FenceMark;
    /// A description of the loss since `mark`, if any.
    async fn lost_since(&self, mark: &FenceMark) -> Option<String>;
}

/// A running engine; cheap to share, and each [`Engine::session`] gets its own table names.
#[derive(Clone)]
pub struct Engine {
    state: SessionState,
    fence: Option<Arc<dyn ExecutorLossFence>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("session_id", &self.state.session_id())
            .finish()
    }
}

impl Engine {
    /// Starts Ballista's scheduler and one executor in this process.
    ///
    /// They run as tasks on the current Tokio runtime and stop with it.
    pub async fn embedded(config: EngineConfig) -> Result<Engine> {
        let state = almanac_session_state(&config)?;
        let ctx = SessionContext::standalone_with_state(state)
            .await
            .context(|| "cannot start the embedded Ballista cluster".to_string())?;
        tracing::debug!(
            parallelism = config.parallelism,
            "embedded ballista cluster started"
        );
        Ok(Engine {
            state: ctx.state(),
            fence: None,
        })
    }

    /// Connects to a running Ballista scheduler (`host:port`), whose executors run the work.
    ///
    /// The scheduler must plan with Almanac's session state and codecs (the Almanac scheduler
    /// does); this process only builds and submits plans.
    pub async fn remote(config: EngineConfig, scheduler: &str) -> Result<Engine> {
        let state = almanac_session_state(&config)?;
        let url = format!("df://{scheduler}");
        let ctx = SessionContext::remote_with_state(&url, state)
            .await
            .context(|| format!("cannot connect to the Ballista scheduler at {scheduler}"))?;
        Ok(Engine {
            state: ctx.state(),
            fence: None,
        })
    }

    /// The same engine, with its queries named `name` on the cluster (Ballista's job name):
    /// a scheduler finds and cancels an Almanac job's queries by it.
    pub fn named(&self, name: &str) -> Engine {
        let config = self.state.config().clone().with_ballista_job_name(name);
        let state = SessionStateBuilder::new_from_existing(self.state.clone())
            .with_config(config)
            .build();
        Engine {
            state,
            fence: self.fence.clone(),
        }
    }

    /// The same engine, refusing results of queries that ran while an executor was lost.
    pub fn with_fence(mut self, fence: Arc<dyn ExecutorLossFence>) -> Engine {
        self.fence = Some(fence);
        self
    }

    /// Marks the cluster's state before a query whose result will be committed.
    pub async fn fence_mark(&self) -> Option<FenceMark> {
        match &self.fence {
            Some(f) => Some(f.mark().await),
            None => None,
        }
    }

    /// Fails, retriably, if an executor was lost since `mark`: the query's result must not
    /// be committed (see [`ExecutorLossFence`]).
    pub async fn check_fence(&self, mark: &Option<FenceMark>) -> Result<()> {
        if let (Some(fence), Some(mark)) = (&self.fence, mark)
            && let Some(lost) = fence.lost_since(mark).await
        {
            return Err(crate::error::JobsError::ExecutorLost(lost));
        }
        Ok(())
    }

    /// A session sharing the engine's cluster, functions and object stores, with a table
    /// namespace of its own so concurrent computations cannot see each other's `source`.
    pub fn session(&self) -> SessionContext {
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let catalog = MemoryCatalogProvider::new();
        // Registering into fresh in-memory providers cannot fail.
        let _ = catalog.register_schema("public", Arc::new(MemorySchemaProvider::new()));
        let _ = datafusion::catalog::CatalogProviderList::register_catalog(
            catalogs.as_ref(),
            "datafusion".to_string(),
            Arc::new(catalog),
        );
        let state = SessionStateBuilder::new_from_existing(self.state.clone())
            .with_catalog_list(catalogs)
            .build();
        SessionContext::new_with_state(state)
    }
}
