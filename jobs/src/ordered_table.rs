//! A file table read as one partition, files in path order and rows in file order.
//!
//! Observation rows must come out "exactly once, in input order", so the order they were
//! read in has to be known: this table lists its files in path order into a single file
//! group and declares that layout, which stops the optimizer from splitting files into byte
//! ranges. Ballista ships it to the scheduler through Almanac's logical codec
//! ([`crate::codec`]), which rebuilds it from the location, format and schema.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Result as DfResult;
use datafusion::common::config::TableOptions;
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::logical_expr::{
    Expr, Partitioning as LogicalPartitioning, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::ident;

use crate::source::format_with;
use crate::spec::SourceKind;

#[derive(Debug)]
pub struct OrderedFileTable {
    pub url: String,
    pub extension: String,
    pub kind: SourceKind,
    inner: ListingTable,
}

impl OrderedFileTable {
    pub fn try_new(
        url: &str,
        extension: &str,
        kind: SourceKind,
        schema: SchemaRef,
        options: &TableOptions,
    ) -> DfResult<Self> {
        let Some(first) = schema.fields().first() else {
            return datafusion::common::plan_err!("{url} has no columns");
        };
        // One declared partition: one file group, files in path order (see ListingOptions).
        let partitioning = LogicalPartitioning::Hash(vec![ident(first.name())], 1);
        let listing = ListingOptions::new(format_with(kind, options))
            .with_file_extension(extension)
            .with_output_partitioning(Some(partitioning));
        let config = ListingTableConfig::new(crate::storage::listing_url(url)?)
            .with_listing_options(listing)
            .with_schema(schema);
        Ok(OrderedFileTable {
            url: url.to_string(),
            extension: extension.to_string(),
            kind,
            inner: ListingTable::try_new(config)?,
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for OrderedFileTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Nothing is filtered at the scan: every observation row is kept.
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }
}
