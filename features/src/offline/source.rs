//! Where a view's offline files live: a local file or directory, or an S3 (or S3-compatible)
//! prefix reached through the registry's S3 client, so endpoint, path style, region and
//! credentials behave exactly as for the model registry.
//!
//! Listing is paged (S3's continuation tokens, at most 1000 objects a page) and files are read
//! one at a time: an S3 object is downloaded to a temporary file, decoded in bounded record
//! batches, and deleted before the next one is fetched.

use crate::FeatureError;
use crate::offline::parquet::{OfflineFile, RowBatch, ViewReader};
use crate::repo::View;
use ferry_registry::{ObjectInfo, RegistryError, S3Options, S3Store, parse_s3_uri};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use tokio::sync::mpsc;

/// A view's opened source.
#[derive(Debug, Clone)]
pub struct OfflineSource {
    /// As written in the repo, for messages.
    uri: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Local(PathBuf),
    S3 {
        /// Rooted at the bucket, so object keys are full keys.
        store: S3Store,
        bucket: String,
        /// The prefix (no trailing slash) or, for a single object, its key.
        key: String,
        /// `source.path` names one object (`…/x.parquet`, no trailing slash).
        single: bool,
    },
}

/// Where one listed file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLocation {
    Local(PathBuf),
    /// The object key from the bucket root.
    S3(String),
}

impl OfflineSource {
    /// Opens `view`'s source: `s3://bucket/prefix/` (every `*.parquet` under it), one
    /// `s3://bucket/key.parquet`, or a local file/directory. `s3` are the registry's S3
    /// settings (`registry.endpoint`, `path_style`, `region`); the AWS SDK chain supplies the
    /// rest (AWS_REGION, credentials, AWS_ENDPOINT_URL[_S3]).
    pub async fn open(view: &View, s3: &S3Options) -> Result<OfflineSource, FeatureError> {
        let uri = view.source.path.clone();
        if uri.starts_with("s3://") {
            let (bucket, key) = parse_s3_uri(&uri).map_err(|e| FeatureError::offline(&uri, e))?;
            let store = S3Store::connect(&format!("s3://{bucket}"), s3)
                .await
                .map_err(|e| FeatureError::offline(&uri, e))?;
            let single = !uri.ends_with('/') && key.ends_with(".parquet");
            return Ok(OfflineSource {
                uri,
                kind: Kind::S3 {
                    store,
                    bucket,
                    key,
                    single,
                },
            });
        }
        if uri.contains("://") && !uri.starts_with("file://") {
            return Err(FeatureError::offline(
                &uri,
                "unsupported scheme: write s3://bucket/prefix/, a file:// URI or a path relative to the repo file",
            ));
        }
        Ok(OfflineSource {
            uri,
            kind: Kind::Local(view.source.resolved.clone()),
        })
    }

    /// The source as written in the repo.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.kind, Kind::S3 { .. })
    }

    /// Lists the source's `*.parquet` files page by page.
    pub fn files(&self) -> FileLister<'_> {
        FileLister {
            source: self,
            state: ListState::Start,
        }
    }

    /// A local copy of `file` to decode: the file itself, or the S3 object downloaded to a
    /// temporary file that is deleted when the copy is dropped.
    pub async fn fetch(&self, file: &OfflineFile) -> Result<LocalCopy, FeatureError> {
        let (store, key) = match (&self.kind, &file.location) {
            (_, FileLocation::Local(path)) => {
                return Ok(LocalCopy {
                    path: path.clone(),
                    _temp: None,
                });
            }
            (Kind::S3 { store, .. }, FileLocation::S3(key)) => (store, key),
            (Kind::Local(_), FileLocation::S3(_)) => {
                return Err(FeatureError::offline(
                    &file.uri,
                    "an S3 object listed for a local source. This is a bug.",
                ));
            }
        };
        let temp = tempfile::Builder::new()
            .prefix("ferry-offline-")
            .suffix(".parquet")
            .tempfile()
            .map_err(|e| {
                FeatureError::offline(
                    &file.uri,
                    format!(
                        "could not create a temporary file to download it into ({e}); set TMPDIR to a writable directory with room for one object"
                    ),
                )
            })?
            .into_temp_path();
        match store.download(key, &temp).await {
            Ok(Some(_)) => Ok(LocalCopy {
                path: temp.to_path_buf(),
                _temp: Some(temp),
            }),
            Ok(None) => Err(FeatureError::offline(
                &file.uri,
                "the object was deleted between listing and reading; run the job again",
            )),
            Err(e) => Err(s3_error(&file.uri, &e)),
        }
    }
}

/// A file ready to decode; a downloaded one is deleted on drop.
#[derive(Debug)]
pub struct LocalCopy {
    path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

impl LocalCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

enum ListState {
    Start,
    Next(String),
    Done,
}

/// Pages of a source's files, in key (path) order.
pub struct FileLister<'a> {
    source: &'a OfflineSource,
    state: ListState,
}

impl FileLister<'_> {
    /// The next page of files (possibly empty when a page held only skipped names), or `None`
    /// after the last one.
    pub async fn next_page(&mut self) -> Result<Option<Vec<OfflineFile>>, FeatureError> {
        let token = match std::mem::replace(&mut self.state, ListState::Done) {
            ListState::Done => return Ok(None),
            ListState::Start => None,
            ListState::Next(token) => Some(token),
        };
        let uri = &self.source.uri;
        match &self.source.kind {
            // A local directory's listing is small (a few hundred bytes a file): one page.
            Kind::Local(root) => {
                let root = root.clone();
                let files = tokio::task::spawn_blocking(move || list_local(&root))
                    .await
                    .map_err(|e| FeatureError::Io(format!("the listing task failed: {e}")))??;
                Ok(Some(files))
            }
            Kind::S3 {
                store,
                bucket,
                key,
                single: true,
            } => {
                let info = store.head(key).await.map_err(|e| s3_error(uri, &e))?;
                let info = info.ok_or_else(|| {
                    FeatureError::offline(
                        uri,
                        "no such object; check `source.path` (end it with `/` to read every *.parquet under a prefix)",
                    )
                })?;
                Ok(Some(vec![s3_file(bucket, key, &info)]))
            }
            Kind::S3 {
                store, bucket, key, ..
            } => {
                let (objects, next) = store
                    .list_page(key, token)
                    .await
                    .map_err(|e| s3_error(uri, &e))?;
                if let Some(next) = next {
                    self.state = ListState::Next(next);
                }
                let files = objects
                    .iter()
                    .filter(|o| wanted(o.key.strip_prefix(key.as_str()).unwrap_or(&o.key)))
                    .map(|o| s3_file(bucket, &o.key, o))
                    .collect();
                Ok(Some(files))
            }
        }
    }
}

/// Whether a path below the source root names a data file: `*.parquet`, no component starting
/// with `_` or `.` (Spark's `_SUCCESS`, `_temporary/`, `.crc` files).
fn wanted(relative: &str) -> bool {
    relative.ends_with(".parquet")
        && relative
            .split('/')
            .filter(|p| !p.is_empty())
            .all(|p| !p.starts_with('_') && !p.starts_with('.'))
}

fn s3_file(bucket: &str, key: &str, info: &ObjectInfo) -> OfflineFile {
    OfflineFile {
        uri: format!("s3://{bucket}/{key}"),
        location: FileLocation::S3(key.to_string()),
        modified_ms: info
            .modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        size: info.size,
        etag: info.etag.clone(),
    }
}

/// An S3 failure as an offline-data error that says what to check. The registry's error
/// types are reused, but their wording ("registry …") would mislead here.
fn s3_error(uri: &str, e: &RegistryError) -> FeatureError {
    let text = match e {
        RegistryError::Store {
            operation,
            key,
            message,
            ..
        } => format!("{operation} {key} failed: {message}"),
        RegistryError::Unavailable {
            operation,
            key,
            message,
            ..
        } => format!("{operation} {key} could not reach S3: {message}"),
        other => other.to_string(),
    };
    let hint = if text.contains("NoSuchBucket") {
        "the bucket does not exist: create it or fix `source.path`"
    } else if text.contains("AccessDenied") || text.contains("Forbidden") {
        "access denied: the credentials need s3:ListBucket on the bucket and s3:GetObject on the objects"
    } else if text.contains("CredentialsNotLoaded") || text.contains("no credentials") {
        "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with a web-identity or instance role"
    } else if e.is_unavailable() {
        "check `registry.endpoint` / AWS_ENDPOINT_URL_S3, AWS_REGION and the network, then run again"
    } else {
        "check `source.path`, the credentials and the S3 settings (`registry.endpoint`, `registry.path_style`, AWS_REGION)"
    };
    FeatureError::offline(uri, format!("{text}; {hint}"))
}

/// The `*.parquet` files of a local file or directory (searched recursively), sorted by path.
fn list_local(root: &Path) -> Result<Vec<OfflineFile>, FeatureError> {
    let mut out = Vec::new();
    let meta = std::fs::metadata(root).map_err(|e| FeatureError::offline(root.display(), e))?;
    if meta.is_file() {
        out.push(describe(root)?);
    } else {
        walk(root, &mut out)?;
    }
    out.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<OfflineFile>) -> Result<(), FeatureError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FeatureError::offline(dir.display(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| FeatureError::offline(dir.display(), e))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('_') {
            continue; // hidden and marker files (_SUCCESS, .crc) of Spark-style outputs
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(describe(&path)?);
        }
    }
    Ok(())
}

fn describe(path: &Path) -> Result<OfflineFile, FeatureError> {
    let meta = std::fs::metadata(path).map_err(|e| FeatureError::offline(path.display(), e))?;
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(OfflineFile {
        uri: path.display().to_string(),
        location: FileLocation::Local(path.to_path_buf()),
        modified_ms,
        size: meta.len(),
        etag: None,
    })
}

/// What a file reader sends: the file's row count once opened, then its batches.
pub enum FileEvent {
    Opened { rows: u64 },
    Batch(RowBatch),
}

/// Decodes `copy` on a blocking thread; events arrive through a channel of two, so memory
/// stays at about two record batches whatever the file's size. The copy (a downloaded temporary
/// file) is deleted when the reader finishes.
pub fn spawn_reader(
    view: View,
    copy: LocalCopy,
    name: String,
    batch_rows: usize,
) -> mpsc::Receiver<Result<FileEvent, FeatureError>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let reader = match ViewReader::open_named(&view, copy.path(), &name, batch_rows) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if tx
            .blocking_send(Ok(FileEvent::Opened {
                rows: reader.rows(),
            }))
            .is_err()
        {
            return;
        }
        for batch in reader {
            let failed = batch.is_err();
            if tx.blocking_send(batch.map(FileEvent::Batch)).is_err() || failed {
                return;
            }
        }
        drop(copy);
    });
    rx
}

/// Streams every row of `view`'s source through `on_batch`, one file at a time; returns the
/// number of files read.
pub async fn scan(
    view: &View,
    source: &OfflineSource,
    batch_rows: usize,
    mut on_batch: impl FnMut(RowBatch) -> Result<(), FeatureError>,
) -> Result<usize, FeatureError> {
    let mut files = source.files();
    let mut read = 0;
    while let Some(page) = files.next_page().await? {
        for file in page {
            let copy = source.fetch(&file).await?;
            let mut events = spawn_reader(view.clone(), copy, file.uri.clone(), batch_rows);
            while let Some(event) = events.recv().await {
                if let FileEvent::Batch(batch) = event? {
                    on_batch(batch)?;
                }
            }
            read += 1;
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_skips_markers_and_hidden_parts() {
        assert!(wanted("/part-0.parquet"));
        assert!(wanted("/date=2026-01-01/part-0.parquet"));
        assert!(!wanted("/_SUCCESS"));
        assert!(!wanted("/_temporary/0/part-0.parquet"));
        assert!(!wanted("/.part-0.parquet.crc"));
        assert!(!wanted("/part-0.csv"));
        assert!(!wanted("/"));
    }

    #[test]
    fn s3_files_are_stamped_by_etag_and_size() {
        let info = ObjectInfo {
            key: "features/a.parquet".into(),
            size: 10,
            modified: Some(UNIX_EPOCH + std::time::Duration::from_secs(5)),
            etag: Some("\"abc\"".into()),
        };
        let f = s3_file("bucket", "features/a.parquet", &info);
        assert_eq!(f.uri, "s3://bucket/features/a.parquet");
        assert_eq!(f.modified_ms, 5000);
        let rewritten = OfflineFile {
            etag: Some("\"def\"".into()),
            ..f.clone()
        };
        // Same size and (second-precision) time, new content: the stamp still changes.
        assert_ne!(f.stamp(), rewritten.stamp());
        let local = OfflineFile {
            etag: None,
            ..f.clone()
        };
        assert_eq!(local.stamp(), "5000:10");
    }

    #[test]
    fn s3_errors_say_what_to_check() {
        let e = RegistryError::Store {
            registry: "s3://b".into(),
            operation: "ListObjectsV2",
            key: "s3://b/x/".into(),
            message: "NoSuchBucket: The specified bucket does not exist".into(),
        };
        let text = s3_error("s3://b/x/", &e).to_string();
        assert!(
            text.contains("s3://b/x/") && text.contains("create it"),
            "{text}"
        );
        let e = RegistryError::Store {
            registry: "s3://b".into(),
            operation: "GetObject",
            key: "s3://b/x/a.parquet".into(),
            message: "AccessDenied: Access Denied".into(),
        };
        let text = s3_error("s3://b/x/a.parquet", &e).to_string();
        assert!(text.contains("s3:GetObject"), "{text}");
        assert!(!text.contains("registry"), "{text}");
        let e = RegistryError::Unavailable {
            registry: "s3://b".into(),
            operation: "ListObjectsV2",
            key: "s3://b/x/".into(),
            message: "dispatch failure: CredentialsNotLoaded".into(),
        };
        let text = s3_error("s3://b/x/", &e).to_string();
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
    }

    fn write_part(path: &Path, users: &[&str], ts: &[i64]) {
        use arrow_array::{Float32Array, Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let batch = RecordBatch::try_from_iter([
            (
                "user_id",
                Arc::new(StringArray::from(users.to_vec())) as arrow_array::ArrayRef,
            ),
            ("event_ts", Arc::new(Int64Array::from(ts.to_vec())) as _),
            (
                "visits_7d",
                Arc::new(Float32Array::from(vec![1.0; users.len()])) as _,
            ),
        ])
        .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[tokio::test]
    async fn local_sources_list_data_files_and_scan_them_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_part(&data.join("part-0.parquet"), &["u1", "u2"], &[1, 2]);
        write_part(&data.join("day=2/part-1.parquet"), &["u3"], &[3]);
        write_part(&data.join("_temporary/part-9.parquet"), &["x"], &[9]);
        std::fs::write(data.join("_SUCCESS"), b"").unwrap();
        std::fs::write(data.join(".part-0.parquet.crc"), b"").unwrap();
        let yaml = "project: p\nentities: [{name: user, join_key: user_id}]\nviews:\n  - name: v\n    entity: user\n    features: [{name: visits_7d, dtype: float32}]\n    source: {path: data/}\n";
        let repo = crate::FeatureRepo::parse(yaml, &dir.path().join("features.yaml")).unwrap();
        let view = &repo.views[0];
        let source = OfflineSource::open(view, &S3Options::default())
            .await
            .unwrap();
        assert!(!source.is_s3());
        let mut lister = source.files();
        let page = lister.next_page().await.unwrap().unwrap();
        let names: Vec<_> = page
            .iter()
            .map(|f| f.uri.strip_prefix(&data.display().to_string()).unwrap())
            .collect();
        assert_eq!(names, ["/day=2/part-1.parquet", "/part-0.parquet"]);
        assert!(lister.next_page().await.unwrap().is_none());
        let mut keys = Vec::new();
        let files = scan(view, &source, 1, |b| {
            keys.extend(b.keys);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(files, 2);
        assert_eq!(keys, ["u3", "u1", "u2"]);
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let yaml = "project: p\nentities: [{name: user, join_key: user_id}]\nviews:\n  - name: v\n    entity: user\n    features: [{name: visits_7d, dtype: float32}]\n    source: {path: \"gs://b/x/\"}\n";
        let repo = crate::FeatureRepo::parse(yaml, Path::new("/r/features.yaml")).unwrap();
        let e = OfflineSource::open(&repo.views[0], &S3Options::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("gs://b/x/") && e.contains("s3://"), "{e}");
    }
}
