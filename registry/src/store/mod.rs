//! Registry stores: a local directory or an S3 bucket prefix, behind one interface. Keys are
//! relative to the registry root and built only from validated names and numbers.

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store, parse_s3_uri};

use crate::RegistryError;
use std::path::Path;
use std::time::SystemTime;

/// One stored file/object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the registry root.
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// The S3 ETag (quoted, as S3 returns it); `None` for local files.
    pub etag: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    S3(S3Store),
}

impl Store {
    /// Contents of a small object (manifest, alias), `None` when absent.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match self {
            Store::Local(s) => s.read(key),
            Store::S3(s) => s.read(key).await,
        }
    }

    /// Names directly under `key`, sorted.
    pub async fn children(&self, key: &str) -> Result<Vec<String>, RegistryError> {
        match self {
            Store::Local(s) => s.children(key),
            Store::S3(s) => s.children(key).await,
        }
    }

    /// Every object under the directory `key`.
    pub async fn list_recursive(&self, key: &str) -> Result<Vec<ObjectInfo>, RegistryError> {
        match self {
            Store::Local(s) => s.list_recursive(key),
            Store::S3(s) => s.list_recursive(key).await,
        }
    }

    /// Overwrites `key` atomically.
    pub async fn write(&self, key: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        match self {
            Store::Local(s) => s.write(key, bytes),
            Store::S3(s) => s.write(key, bytes).await,
        }
    }

    /// Creates `key` unless it exists; `Ok(false)` when it does.
    pub async fn create(&self, key: &str, bytes: &[u8]) -> Result<bool, RegistryError> {
        match self {
            Store::Local(s) => s.create(key, bytes),
            Store::S3(s) => s.create(key, bytes.to_vec().into()).await,
        }
    }

    /// Size, modification time and ETag of the object (file) `key`; `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, RegistryError> {
        match self {
            Store::Local(s) => s.head(key),
            Store::S3(s) => s.head(key).await,
        }
    }

    /// Overwrites `key` with the contents of a local file, atomically (local: temporary file
    /// in the same directory, then rename; S3: one streamed PutObject, which readers see
    /// whole or not at all).
    pub async fn write_from_file(&self, key: &str, source: &Path) -> Result<(), RegistryError> {
        match self {
            Store::Local(s) => s.write_from_file(key, source),
            Store::S3(s) => s.write_from_file(key, source).await,
        }
    }

    /// Removes `key`; removing an absent key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), RegistryError> {
        match self {
            Store::Local(s) => s.delete(key),
            Store::S3(s) => s.delete(key).await,
        }
    }

    /// Streams `key` into the local file `dest` (created or truncated); `Ok(false)` when the
    /// key does not exist. Never holds the whole object in memory.
    pub async fn download_to(&self, key: &str, dest: &Path) -> Result<bool, RegistryError> {
        match self {
            Store::Local(s) => s.copy_to(key, dest),
            Store::S3(s) => Ok(s.download(key, dest).await?.is_some()),
        }
    }

    /// Creates `key` from a local file (streamed) unless it exists; `Ok(false)` when it does.
    pub async fn create_from_file(&self, key: &str, source: &Path) -> Result<bool, RegistryError> {
        match self {
            Store::Local(s) => s.create_from_file(key, source),
            Store::S3(s) => s.create_from_file(key, source).await,
        }
    }
}
