//! The offline store: Parquet files with the join key column, an event-time column and one
//! column per feature. Local files and directories; S3 sources are refused with a clear error
//! until the S3 registry client is available to this crate.

pub mod parquet;

pub use parquet::{OfflineFile, RowBatch, ViewReader, list_files, read_all};
