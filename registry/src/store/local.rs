use super::ObjectInfo;
use crate::RegistryError;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A registry on the local file system (or a `file://` URI).
///
/// Calls are plain blocking file-system calls on small files (manifests, aliases, directory
/// listings); artifacts are never read here on the request path.
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
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    /// The contents of `key`, or `None` when it does not exist.
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::IsADirectory => {
                Ok(None)
            }
            Err(e) => Err(RegistryError::io(path, e)),
        }
    }

    /// Names of the entries directly under `key` (empty when `key` does not exist).
    pub fn children(&self, key: &str) -> Result<Vec<String>, RegistryError> {
        let path = self.path(key);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                return Ok(Vec::new());
            }
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

    /// Every file under `prefix` (a directory key), with sizes and modification times.
    pub fn list_recursive(&self, prefix: &str) -> Result<Vec<ObjectInfo>, RegistryError> {
        let mut out = Vec::new();
        let mut stack = vec![prefix.trim_end_matches('/').to_string()];
        while let Some(dir) = stack.pop() {
            for name in self.children(&dir)? {
                let key = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let path = self.path(&key);
                let meta = std::fs::metadata(&path).map_err(|e| RegistryError::io(&path, e))?;
                if meta.is_dir() {
                    stack.push(key);
                } else {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                        modified: meta.modified().ok(),
                        etag: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn temp_path(&self, path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    fn create_parent(path: &Path) -> Result<(), RegistryError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::io(parent, e))?;
        }
        Ok(())
    }

    /// Replaces `key` atomically (write a temporary file, then rename): readers see the old or
    /// the new contents, never a half-written file.
    pub fn write(&self, key: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = self.path(key);
        Self::create_parent(&path)?;
        let tmp = self.temp_path(&path);
        std::fs::write(&tmp, bytes).map_err(|e| RegistryError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RegistryError::io(&path, e)
        })
    }

    /// Creates `key` from `source` only if it does not exist yet; `Ok(false)` when it does.
    /// The copy is written to a temporary file and hard-linked into place, which fails
    /// atomically when the name is taken, so two publishers can never overwrite each other.
    pub fn create_from_file(&self, key: &str, source: &Path) -> Result<bool, RegistryError> {
        let path = self.path(key);
        Self::create_parent(&path)?;
        let tmp = self.temp_path(&path);
        std::fs::copy(source, &tmp).map_err(|e| RegistryError::io(source, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(RegistryError::io(&path, e)),
        }
    }

    /// Like `create_from_file`, from bytes.
    pub fn create(&self, key: &str, bytes: &[u8]) -> Result<bool, RegistryError> {
        let path = self.path(key);
        Self::create_parent(&path)?;
        let tmp = self.temp_path(&path);
        std::fs::write(&tmp, bytes).map_err(|e| RegistryError::io(&tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(RegistryError::io(&path, e)),
        }
    }

    /// Size and modification time of the file `key`; `None` when absent or a directory.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, RegistryError> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: meta.len(),
                modified: meta.modified().ok(),
                etag: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                Ok(None)
            }
            Err(e) => Err(RegistryError::io(path, e)),
        }
    }

    /// Replaces `key` with a copy of `source`: copied to a temporary file next to it, synced,
    /// then renamed, so readers never see a partial file.
    pub fn write_from_file(&self, key: &str, source: &Path) -> Result<(), RegistryError> {
        let path = self.path(key);
        Self::create_parent(&path)?;
        let tmp = self.temp_path(&path);
        let copied = std::fs::copy(source, &tmp)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| RegistryError::io(source, e));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RegistryError::io(&path, e)
        })
    }

    /// Removes the file `key`; an absent file is not an error.
    pub fn delete(&self, key: &str) -> Result<(), RegistryError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RegistryError::io(path, e)),
        }
    }

    /// Copies the file `key` to `dest`; `Ok(false)` when it does not exist.
    pub fn copy_to(&self, key: &str, dest: &Path) -> Result<bool, RegistryError> {
        let path = self.path(key);
        match std::fs::copy(&path, dest) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RegistryError::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_write_from_file_delete_and_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        assert_eq!(store.head("a/b.txt").unwrap(), None);
        let src = dir.path().join("src.txt");
        std::fs::write(&src, b"hello").unwrap();
        store.write_from_file("a/b.txt", &src).unwrap();
        let info = store.head("a/b.txt").unwrap().unwrap();
        assert_eq!(
            (info.key.as_str(), info.size, info.etag),
            ("a/b.txt", 5, None)
        );
        assert!(info.modified.is_some());
        // Overwrites, and leaves no temporary file next to it.
        std::fs::write(&src, b"hello, world").unwrap();
        store.write_from_file("a/b.txt", &src).unwrap();
        assert_eq!(store.read("a/b.txt").unwrap().unwrap(), b"hello, world");
        assert_eq!(store.children("a").unwrap(), vec!["b.txt".to_string()]);
        // A directory is not an object.
        assert_eq!(store.head("a").unwrap(), None);
        let dest = dir.path().join("copy.txt");
        assert!(store.copy_to("a/b.txt", &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello, world");
        assert!(!store.copy_to("a/missing", &dest).unwrap());
        store.delete("a/b.txt").unwrap();
        store.delete("a/b.txt").unwrap();
        assert_eq!(store.head("a/b.txt").unwrap(), None);
    }
}
