//! Delta Lake tables as sources.
//!
//! delta-rs' own scan node cannot be shipped to Ballista executors, so Almanac reads a table's
//! log here, on the side that plans, and scans the snapshot's data files as plain parquet.

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableBuilder;

use crate::error::{JobsError, Result};
use crate::source::SourceLocation;

/// The parquet files of the table's current version.
pub(crate) async fn data_file_urls(
    ctx: &SessionContext,
    location: &SourceLocation,
) -> Result<Vec<ListingTableUrl>> {
    let mut table_url = location.urls[0].get_url().clone();
    if !table_url.path().ends_with('/') {
        table_url.set_path(&format!("{}/", table_url.path()));
    }
    let store = ctx
        .runtime_env()
        .object_store(&location.urls[0])
        .map_err(|e| JobsError::Source {
            path: location.display.clone(),
            message: e.to_string(),
        })?;
    let delta_err = |e: deltalake::DeltaTableError| JobsError::Delta {
        uri: location.display.clone(),
        source: Box::new(e),
    };
    crate::storage::register_delta_log_stores();
    let table = DeltaTableBuilder::from_url(table_url.clone())
        .map_err(delta_err)?
        .with_storage_backend(store, table_url)
        .load()
        .await
        .map_err(|e| match e {
            deltalake::DeltaTableError::NotATable(_)
            | deltalake::DeltaTableError::InvalidTableLocation(_) => JobsError::Source {
                path: location.display.clone(),
                message: "is not a Delta Lake table (no _delta_log found)".to_string(),
            },
            other => delta_err(other),
        })?;
    let partitions = table
        .snapshot()
        .map_err(delta_err)?
        .metadata()
        .partition_columns()
        .to_vec();
    if !partitions.is_empty() {
        return Err(JobsError::Source {
            path: location.display.clone(),
            message: format!(
                "is partitioned by {}; partitioned Delta tables are not yet supported as sources \
                 (their partition values live in the log, not in the files)",
                partitions.join(", ")
            ),
        });
    }
    let urls = table
        .get_file_uris()
        .map_err(delta_err)?
        .map(|uri| {
            ListingTableUrl::parse(&uri).map_err(|e| JobsError::Source {
                path: location.display.clone(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if urls.is_empty() {
        return Err(JobsError::Source {
            path: location.display.clone(),
            message: "the Delta table has no data files".into(),
        });
    }
    Ok(urls)
}
