use crate::RegistryError;
use std::path::{Path, PathBuf};

/// A registry on the local file system (or a `file://` URI).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `key` is built only from validated names and numbers, so it stays under the root.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The contents of `key`, or `None` when it does not exist.
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::io(path, e)),
        }
    }

    /// Names of the entries directly under `key` (empty when `key` does not exist).
    pub fn list(&self, key: &str) -> Result<Vec<String>, RegistryError> {
        let path = self.path(key);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::io(path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::io(&path, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}
