//! The offline store: Parquet files with the join key column, an event-time column and one
//! column per feature, in a local file or directory or under an S3 prefix.

pub mod parquet;
pub mod source;

pub use parquet::{OfflineFile, RowBatch, ViewReader};
pub use source::{FileEvent, FileLocation, LocalCopy, OfflineSource, scan, spawn_reader};
