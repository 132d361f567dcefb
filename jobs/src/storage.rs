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

#[cfg(test)]
mod tests {
    use super::*;

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
