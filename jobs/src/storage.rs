//! Object stores for every URL scheme Almanac reads and writes.
//!
//! Stores are created on first use from the URL and the environment, in the usual way for each
//! store (`AWS_*` for `s3://`, `AZURE_STORAGE_*` for `az://`/`abfss://`, `GOOGLE_*` for `gs://`),
//! never from a spec, so credentials stay out of files that get committed. The same registry is
//! installed on the client, the scheduler and every executor.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use url::Url;

/// Schemes Almanac knows how to reach, for error messages.
pub const SUPPORTED_SCHEMES: &str = "file://, s3://, az://, abfs://, abfss://, azure://, gs://";

#[derive(Debug, Default)]
pub struct AlmanacObjectStores {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl AlmanacObjectStores {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Stores are shared per scheme and authority (bucket, container@account), as DataFusion does.
fn key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeUsername..url::Position::AfterPort]
    )
}

fn build(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let wrap = |store: &str, e: object_store::Error| {
        DataFusionError::Configuration(format!(
            "cannot set up the {store} store for {}: {e}",
            key(url)
        ))
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => Arc::new(LocalFileSystem::new()),
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| wrap("S3", e))?,
        ),
        "az" | "abfs" | "abfss" | "azure" | "adl" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| wrap("Azure Blob Storage", e))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| wrap("Google Cloud Storage", e))?,
        ),
        other => {
            return Err(DataFusionError::Configuration(format!(
                "no object store for the URL scheme '{other}' in {url}; Almanac supports {SUPPORTED_SCHEMES}"
            )));
        }
    };
    Ok(store)
}

impl ObjectStoreRegistry for AlmanacObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(url))
            .ok_or_else(|| {
                DataFusionError::Execution(format!("no object store registered for {}", key(url)))
            })
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let k = key(url);
        if let Some(store) = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
        {
            return Ok(Arc::clone(store));
        }
        let store = build(url)?;
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(stores.entry(k).or_insert(store)))
    }
}

/// A listing URL for a local path or an object-store URL, with a glob in either. DataFusion
/// splits globs off local paths only; for `s3://bucket/data/*.parquet` the part from the
/// first segment with a glob character on is made the listing's glob here.
pub fn listing_url(text: &str) -> Result<datafusion::datasource::listing::ListingTableUrl> {
    use datafusion::datasource::listing::ListingTableUrl;
    let is_url = text.contains("://") && !std::path::Path::new(text).is_absolute();
    let glob_at = text.find(['*', '?', '[']);
    match (is_url, glob_at) {
        (true, Some(at)) => {
            let split = text[..at].rfind('/').map_or(0, |i| i + 1);
            let (base, glob) = text.split_at(split);
            ListingTableUrl::parse(base)?.with_glob(glob)
        }
        _ => ListingTableUrl::parse(text),
    }
}

/// Object-store schemes whose Delta tables commit through delta-rs' default log store.
const DELTA_SCHEMES: [&str; 8] = ["s3", "s3a", "az", "abfs", "abfss", "azure", "adl", "gs"];

/// Lets delta-rs keep Delta tables on every object store Almanac reaches. Almanac hands
/// delta-rs its own store for each table (so credentials come from the same place as for
/// sources); delta-rs still wants a log store for the URL's scheme, and its built-in ones
/// cover only local files unless its per-cloud crates are linked. The default log store
/// commits a version by creating its log file with a conditional put (`If-None-Match: *`,
/// supported by S3, Azure Blob Storage and GCS), so two writers cannot both commit a version:
/// the loser sees a conflict and retries on the new state. Idempotent.
pub fn register_delta_log_stores() {
    use deltalake::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
    };

    struct ConditionalPutLogStore;
    impl LogStoreFactory for ConditionalPutLogStore {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factories = logstore_factories();
        for scheme in DELTA_SCHEMES {
            let url = Url::parse(&format!("{scheme}://")).expect("a scheme URL parses");
            factories
                .entry(url)
                .or_insert_with(|| Arc::new(ConditionalPutLogStore));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_globs_list_their_base_and_filter_by_the_rest() {
        let url = listing_url("s3://bucket/data/part-*/x*.parquet").unwrap();
        assert_eq!(url.as_str(), "s3://bucket/data/");
        assert_eq!(
            url.get_glob().as_ref().map(|g| g.as_str()),
            Some("part-*/x*.parquet")
        );
        let plain = listing_url("s3://bucket/data/").unwrap();
        assert!(plain.get_glob().is_none());
    }

    #[test]
    fn stores_are_keyed_by_bucket() {
        let a = Url::parse("s3://bucket-a/path/x.parquet").unwrap();
        assert_eq!(key(&a), "s3://bucket-a");
        let f = Url::parse("file:///tmp/x").unwrap();
        assert_eq!(key(&f), "file://");
        let registry = AlmanacObjectStores::new();
        assert!(registry.get_store(&f).is_ok());
        let err = registry
            .get_store(&Url::parse("ftp://host/x").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }
}
