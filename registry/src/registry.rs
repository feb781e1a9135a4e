use crate::{
    LocalStore, MANIFEST_FILE, Manifest, ModelRef, RegistryError, Selector, is_valid_name,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A model registry: resolves references to versions and hands out verified versions.
#[derive(Debug, Clone)]
pub struct Registry {
    uri: String,
    store: LocalStore,
}

/// A model version whose every file matched its manifest digest when it was fetched.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl VerifiedModel {
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.artifact)
    }
}

impl Registry {
    /// Opens a registry at a local path or `file://` URI.
    pub fn open(uri: &str) -> Result<Registry, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let path = if let Some(rest) = uri.strip_prefix("file://") {
            rest
        } else if uri.starts_with("s3://") {
            return Err(invalid(
                "S3 registries are not supported by this build yet; use a local directory",
            ));
        } else if uri.contains("://") {
            return Err(invalid(
                "use a local path, a file:// URI or s3://bucket/prefix",
            ));
        } else {
            uri
        };
        if path.is_empty() {
            return Err(invalid("the path is empty"));
        }
        let root = Path::new(path);
        if !root.is_dir() {
            return Err(invalid("no such directory"));
        }
        Ok(Registry {
            uri: uri.to_string(),
            store: LocalStore::new(root),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Model names in the registry.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .store
            .list("")?
            .into_iter()
            .filter(|n| is_valid_name(n))
            .collect())
    }

    /// Versions of `name`, ascending; a version counts once its manifest exists.
    pub fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        self.check_name(name)?;
        let mut versions: Vec<u64> = self
            .store
            .list(name)?
            .into_iter()
            .filter_map(|entry| entry.parse::<u64>().ok().filter(|&v| v > 0))
            .filter(|v| {
                self.store
                    .path(&format!("{name}/{v}/{MANIFEST_FILE}"))
                    .is_file()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Aliases of `name` and the versions they point at.
    pub fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        self.check_name(name)?;
        let mut out = Vec::new();
        for alias in self.store.list(&format!("{name}/aliases"))? {
            if is_valid_name(&alias) {
                out.push((alias.clone(), self.read_alias(name, &alias)?));
            }
        }
        Ok(out)
    }

    fn check_name(&self, name: &str) -> Result<(), RegistryError> {
        if !is_valid_name(name) {
            return Err(RegistryError::InvalidModelRef {
                given: name.to_string(),
                reason: "model names match [a-z0-9][a-z0-9_-]{0,62}".into(),
            });
        }
        if !self.store.path(name).is_dir() {
            return Err(RegistryError::ModelNotFound {
                name: name.to_string(),
                registry: self.uri.clone(),
            });
        }
        Ok(())
    }

    fn read_alias(&self, name: &str, alias: &str) -> Result<u64, RegistryError> {
        let key = format!("{name}/aliases/{alias}");
        let Some(bytes) = self.store.read(&key)? else {
            let available = self
                .store
                .list(&format!("{name}/aliases"))?
                .into_iter()
                .filter(|a| is_valid_name(a))
                .collect();
            return Err(RegistryError::AliasNotFound {
                name: name.to_string(),
                alias: alias.to_string(),
                available,
            });
        };
        let content = String::from_utf8_lossy(&bytes).trim().to_string();
        match content.parse::<u64>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(RegistryError::InvalidAlias {
                name: name.to_string(),
                alias: alias.to_string(),
                content,
            }),
        }
    }

    /// The version a reference points at now.
    pub fn resolve(&self, model: &ModelRef) -> Result<u64, RegistryError> {
        self.check_name(&model.name)?;
        let version =
            match &model.selector {
                Selector::Version(v) => *v,
                Selector::Alias(alias) => self.read_alias(&model.name, alias)?,
                Selector::Latest => *self.versions(&model.name)?.last().ok_or_else(|| {
                    RegistryError::NoVersions {
                        name: model.name.clone(),
                    }
                })?,
            };
        let versions = self.versions(&model.name)?;
        if !versions.contains(&version) {
            return Err(RegistryError::VersionNotFound {
                name: model.name.clone(),
                version,
                available: versions,
            });
        }
        Ok(version)
    }

    /// Reads and validates the manifest of `name@version`.
    pub fn manifest(&self, name: &str, version: u64) -> Result<Manifest, RegistryError> {
        self.check_name(name)?;
        let key = format!("{name}/{version}/{MANIFEST_FILE}");
        let Some(bytes) = self.store.read(&key)? else {
            return Err(RegistryError::VersionNotFound {
                name: name.to_string(),
                version,
                available: self.versions(name)?,
            });
        };
        let text = String::from_utf8(bytes).map_err(|_| RegistryError::Manifest {
            path: key.clone(),
            message: "not UTF-8 text".into(),
        })?;
        Manifest::parse(&text, &key, name, version)
    }

    /// The manifest of `name@version` after checking every file it lists against its sha256.
    pub fn fetch(&self, name: &str, version: u64) -> Result<VerifiedModel, RegistryError> {
        let manifest = self.manifest(name, version)?;
        let dir = self.store.path(&format!("{name}/{version}"));
        for (file, expected) in manifest.digests() {
            let actual = sha256_file(&dir.join(file))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(RegistryError::DigestMismatch {
                    name: name.to_string(),
                    version,
                    file: file.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(VerifiedModel { manifest, dir })
    }
}

/// Hex sha256 of a file, read in chunks so large artifacts are never held in memory whole.
pub fn sha256_file(path: &Path) -> Result<String, RegistryError> {
    let mut file = std::fs::File::open(path).map_err(|e| RegistryError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| RegistryError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_version(root: &Path, name: &str, version: u64, artifact: &[u8], digest: Option<&str>) {
        let dir = root.join(format!("{name}/{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), artifact).unwrap();
        let digest = digest
            .map(str::to_string)
            .unwrap_or_else(|| hex::encode(Sha256::digest(artifact)));
        std::fs::write(
            dir.join(MANIFEST_FILE),
            format!(
                "name: {name}\nversion: {version}\nformat: onnx\nartifact: model.onnx\nsha256: \"{digest}\"\n\
                 inputs: [{{name: x, datatype: FP32, shape: [-1, 2]}}]\noutputs: [{{name: y, datatype: FP32, shape: [-1]}}]\n"
            ),
        )
        .unwrap();
    }

    fn alias(root: &Path, name: &str, alias: &str, content: &str) {
        std::fs::create_dir_all(root.join(format!("{name}/aliases"))).unwrap();
        std::fs::write(root.join(format!("{name}/aliases/{alias}")), content).unwrap();
    }

    #[test]
    fn resolves_versions_aliases_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "churn", 1, b"one", None);
        write_version(dir.path(), "churn", 2, b"two", None);
        std::fs::create_dir_all(dir.path().join("churn/3")).unwrap(); // no manifest yet
        alias(dir.path(), "churn", "champion", "1\n");
        let reg = Registry::open(dir.path().to_str().unwrap()).unwrap();
        let r = |s: &str| reg.resolve(&ModelRef::parse(s).unwrap());
        assert_eq!(r("churn@champion").unwrap(), 1);
        assert_eq!(r("churn@2").unwrap(), 2);
        assert_eq!(r("churn").unwrap(), 2);
        assert!(
            matches!(r("churn@3"), Err(RegistryError::VersionNotFound { available, .. }) if available == vec![1, 2])
        );
        assert!(
            matches!(r("churn@gone"), Err(RegistryError::AliasNotFound { available, .. }) if available == vec!["champion".to_string()])
        );
        assert!(matches!(
            r("fraud@1"),
            Err(RegistryError::ModelNotFound { .. })
        ));
        assert_eq!(
            reg.aliases("churn").unwrap(),
            vec![("champion".to_string(), 1)]
        );
        assert_eq!(reg.models().unwrap(), vec!["churn".to_string()]);
    }

    #[test]
    fn alias_with_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "churn", 1, b"one", None);
        alias(dir.path(), "churn", "bad", "one");
        let reg = Registry::open(dir.path().to_str().unwrap()).unwrap();
        let err = reg
            .resolve(&ModelRef::parse("churn@bad").unwrap())
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidAlias { .. }), "{err}");
    }

    #[test]
    fn fetch_verifies_digests() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "good", 1, b"weights", None);
        write_version(dir.path(), "bad", 1, b"weights", Some(&"0".repeat(64)));
        let reg = Registry::open(&format!("file://{}", dir.path().display())).unwrap();
        let ok = reg.fetch("good", 1).unwrap();
        assert_eq!(ok.artifact_path(), dir.path().join("good/1/model.onnx"));
        let err = reg.fetch("bad", 1).unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("sha256"), "{err}");
        // A file truncated after publishing (half-written copy) is refused the same way.
        std::fs::write(dir.path().join("good/1/model.onnx"), b"weig").unwrap();
        assert!(matches!(
            reg.fetch("good", 1),
            Err(RegistryError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn open_refuses_unsupported_uris() {
        for uri in ["", "http://x/y", "/definitely/not/here"] {
            assert!(
                matches!(Registry::open(uri), Err(RegistryError::InvalidUri { .. })),
                "{uri}"
            );
        }
    }
}
