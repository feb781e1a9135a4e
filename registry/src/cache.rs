//! The local cache of model versions downloaded from S3 or an MLflow tracking server.
//!
//! Layout: `<cache_dir>/<store id>/<model>/<version>/` holds the version's files, its
//! `model.yaml` and a `.ferry-verified` marker. A version is downloaded into a uniquely named
//! temporary directory next to it, every file is streamed to disk while its sha256 is computed,
//! the digests are compared with the manifest, the marker is written, files are fsynced, and
//! only then is the directory renamed into place. A final directory is never written again,
//! so concurrent replicas on one host cannot corrupt it: the loser of a rename race deletes
//! its own copy and uses the winner's.
//!
//! On a later start a final directory is trusted through its marker (written only after the
//! digests matched) plus a cheap check that every file still has the size recorded there; the
//! files are not re-hashed.

use crate::store::S3Store;
use crate::{MANIFEST_FILE, Manifest, RegistryError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const VERIFIED_MARKER: &str = ".ferry-verified";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// relative path -> (sha256, size in bytes)
    files: BTreeMap<String, (String, u64)>,
}

/// Where downloads of one S3 registry go.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// The default cache directory: `$XDG_CACHE_HOME/ferry`, `$HOME/.cache/ferry`, or a directory
/// under the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache/ferry");
    }
    std::env::temp_dir().join("ferry-cache")
}

fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes a temporary download directory unless it was renamed into place.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a staged directory is only taken by commit. This is a bug.")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Cache {
    pub fn new(cache_dir: &Path, store: &S3Store) -> Cache {
        let id = format!(
            "s3-{}-p-{}",
            sanitize(store.bucket()),
            sanitize(store.prefix())
        );
        Cache {
            root: cache_dir.join(id),
        }
    }

    /// The cache of an MLflow tracking server, `id` naming it (host, port, path).
    pub fn for_mlflow(cache_dir: &Path, id: &str) -> Cache {
        Cache {
            root: cache_dir.join(format!("mlflow-{}", sanitize(id))),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        self.root.join(name).join(version.to_string())
    }

    /// The cached, verified copy of `name@version`, if there is a usable one.
    pub fn lookup(&self, name: &str, version: u64) -> Option<(Manifest, PathBuf)> {
        let dir = self.version_dir(name, version);
        let marker = std::fs::read(dir.join(VERIFIED_MARKER)).ok()?;
        let marker: Marker = serde_json::from_slice(&marker).ok()?;
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        let manifest = Manifest::parse(&text, &dir.display().to_string(), name, version).ok()?;
        for (file, digest) in manifest.digests() {
            let (marked_digest, size) = marker.files.get(file)?;
            let intact = marked_digest.eq_ignore_ascii_case(digest)
                && std::fs::metadata(dir.join(file)).is_ok_and(|m| m.len() == *size);
            if !intact {
                tracing::warn!(model = name, version, file, dir = %dir.display(), "Cached model file changed after it was verified; downloading it again.");
                self.discard(&dir);
                return None;
            }
        }
        Some((manifest, dir))
    }

    /// Drops the cached copy of `name@version` (an MLflow version that was deleted and
    /// registered again under the same number is another model).
    pub fn evict(&self, name: &str, version: u64) {
        let dir = self.version_dir(name, version);
        if dir.exists() {
            self.discard(&dir);
        }
    }

    /// Moves a damaged final directory out of the way (rename, then delete), so the next
    /// download can take its place.
    fn discard(&self, dir: &Path) {
        let trash = dir.with_file_name(format!(".stale-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(dir, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(trash);
        }
    }

    /// Downloads `name@version` (whose manifest text is `manifest_text`) from `store`, verifies
    /// every digest, and renames it into place.
    pub async fn download(
        &self,
        store: &S3Store,
        manifest: &Manifest,
        manifest_text: &str,
    ) -> Result<PathBuf, RegistryError> {
        let (name, version) = (manifest.name.as_str(), manifest.version);
        let mut staging = self.stage(name, version)?;
        for (file, expected) in manifest.digests() {
            let dest = staging.file(file)?;
            let key = format!("{name}/{version}/{file}");
            let actual =
                store
                    .download(&key, &dest)
                    .await?
                    .ok_or_else(|| RegistryError::Manifest {
                        path: format!("{name}/{version}/{MANIFEST_FILE}"),
                        message: format!("lists `{file}`, which is not in the registry ({key})"),
                    })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(RegistryError::DigestMismatch {
                    name: name.to_string(),
                    version,
                    file: file.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
            staging.record(file, actual)?;
        }
        self.commit(staging, manifest_text)
    }

    /// A uniquely named temporary directory for downloading `name@version` into; removed
    /// unless `commit` renames it into place.
    pub fn stage(&self, name: &str, version: u64) -> Result<Staging, RegistryError> {
        let model_dir = self.root.join(name);
        std::fs::create_dir_all(&model_dir)
            .map_err(|e| RegistryError::cache_write(&model_dir, e))?;
        let tmp_path = model_dir.join(format!(
            ".tmp-{version}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&tmp_path).map_err(|e| RegistryError::cache_write(&tmp_path, e))?;
        Ok(Staging {
            dir: TempDir(Some(tmp_path)),
            name: name.to_string(),
            version,
            marker: Marker {
                files: BTreeMap::new(),
            },
        })
    }

    /// Writes the manifest and the verified marker (every file `record`ed with its digest and
    /// size), fsyncs them, and renames the staged version into place.
    pub fn commit(&self, staging: Staging, manifest_text: &str) -> Result<PathBuf, RegistryError> {
        let Staging {
            dir: mut tmp,
            name,
            version,
            marker,
        } = staging;
        let tmp_path = tmp.path().to_path_buf();
        let write = |path: PathBuf, bytes: &[u8]| -> Result<(), RegistryError> {
            use std::io::Write;
            let mut f =
                std::fs::File::create(&path).map_err(|e| RegistryError::cache_write(&path, e))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| RegistryError::cache_write(&path, e))
        };
        write(tmp_path.join(MANIFEST_FILE), manifest_text.as_bytes())?;
        let marker = serde_json::to_vec(&marker).expect("a marker serializes. This is a bug.");
        write(tmp_path.join(VERIFIED_MARKER), &marker)?;
        let final_dir = self.version_dir(&name, version);
        match std::fs::rename(&tmp_path, &final_dir) {
            Ok(()) => {
                tmp.0 = None;
                Ok(final_dir)
            }
            // Another process finished first (rename onto a non-empty directory fails): its
            // copy is verified too; ours is dropped with `tmp`.
            Err(_) if final_dir.join(VERIFIED_MARKER).is_file() => Ok(final_dir),
            Err(e) => Err(RegistryError::cache_write(&final_dir, e)),
        }
    }
}

/// A version being downloaded into the cache: files go under `path()`, each `record`ed once
/// its digest is known; dropped without `Cache::commit`, the directory is removed.
pub struct Staging {
    dir: TempDir,
    name: String,
    version: u64,
    marker: Marker,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the version's relative `file` goes (its parent directories created).
    pub fn file(&self, file: &str) -> Result<PathBuf, RegistryError> {
        let dest = self.path().join(file);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::cache_write(parent, e))?;
        }
        Ok(dest)
    }

    /// The digest `record`ed for `file`.
    pub fn digest(&self, file: &str) -> Option<String> {
        self.marker
            .files
            .get(file)
            .map(|(digest, _)| digest.clone())
    }

    /// Records that `file` is complete and has the hex sha256 `digest`.
    pub fn record(&mut self, file: &str, digest: String) -> Result<(), RegistryError> {
        let path = self.path().join(file);
        let size = std::fs::metadata(&path)
            .map_err(|e| RegistryError::cache_write(&path, e))?
            .len();
        self.marker.files.insert(file.to_string(), (digest, size));
        Ok(())
    }
}
