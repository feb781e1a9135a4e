//! Where batch inputs come from and outputs go: a local directory or an S3 prefix, through the
//! registry's stores so S3 endpoint, path style, region and credentials behave exactly as for
//! the model registry.

use super::BatchError;
use ferry_registry::{LocalStore, ObjectInfo, S3Options, S3Store, Store, parse_s3_uri};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A root (local directory or `s3://bucket`) plus a key prefix under it.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Store,
    /// Key of the directory/prefix (or file) under the store root, no trailing slash.
    pub key: String,
    /// The URI as given, for messages and markers.
    pub uri: String,
}

impl Location {
    /// Opens `uri`: `s3://bucket/prefix`, a `file://` URI or a local path.
    pub async fn open(uri: &str, s3: &S3Options) -> Result<Location, BatchError> {
        if uri.starts_with("s3://") {
            let (bucket, key) = parse_s3_uri(uri)?;
            let store = S3Store::connect(&format!("s3://{bucket}"), s3).await?;
            return Ok(Location {
                store: Store::S3(store),
                key,
                uri: uri.to_string(),
            });
        }
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        let path = std::path::absolute(path).map_err(|e| BatchError::Io {
            path: PathBuf::from(path),
            message: e.to_string(),
        })?;
        Ok(Location {
            store: Store::Local(LocalStore::new("/")),
            key: path.to_string_lossy().trim_matches('/').to_string(),
            uri: uri.to_string(),
        })
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.store, Store::S3(_))
    }

    /// The full store key of `rel` under this location.
    pub fn join(&self, rel: &str) -> String {
        if self.key.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.key)
        }
    }

    /// The local path of `rel` (local locations only).
    pub fn local_path(&self, rel: &str) -> Option<PathBuf> {
        match &self.store {
            Store::Local(s) => Some(s.path(&self.join(rel))),
            Store::S3(_) => None,
        }
    }

    /// A URI for `key` (a full store key) for messages and markers.
    pub fn uri_of(&self, key: &str) -> String {
        match &self.store {
            Store::Local(_) => format!("/{key}"),
            Store::S3(s) => format!("s3://{}/{key}", s.bucket()),
        }
    }
}

/// Input file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Parquet,
    Csv,
    Jsonl,
}

impl InputFormat {
    pub fn from_name(name: &str) -> Option<InputFormat> {
        let lower = name.to_ascii_lowercase();
        let ext = lower.rsplit_once('.').map(|(_, e)| e)?;
        match ext {
            "parquet" | "pq" => Some(InputFormat::Parquet),
            "csv" => Some(InputFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(InputFormat::Jsonl),
            _ => None,
        }
    }
}

/// One input file.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Full store key.
    pub key: String,
    /// Path relative to the input base (what names the unit).
    pub rel: String,
    pub info: ObjectInfo,
    pub format: InputFormat,
}

impl InputFile {
    /// What a completion marker records of the input; equal fingerprints mean unchanged input.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.info.size,
            etag: self.info.etag.clone(),
            modified_ms: self
                .info
                .modified
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    pub etag: Option<String>,
    pub modified_ms: Option<u64>,
}

/// Matches `path` against a glob: `*` and `?` stay within one path segment, `**` crosses
/// segments, `[abc]` is a character class.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
                    || (0..=s.len()).any(|i| go(&p[2..], &s[i..]))
            }
            Some(b'*') => {
                for i in 0..=s.len() {
                    if go(&p[1..], &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(b'[') => {
                let Some(end) = p.iter().position(|&c| c == b']') else {
                    return !s.is_empty() && s[0] == b'[' && go(&p[1..], &s[1..]);
                };
                let class = &p[1..end];
                !s.is_empty() && class.contains(&s[0]) && go(&p[end + 1..], &s[1..])
            }
            Some(&c) => !s.is_empty() && s[0] == c && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

/// Whether a relative path is hidden from listings: any part starting with `_` or `.`
/// (markers, temporary files, `_SUCCESS`), like Spark and pyarrow datasets.
fn hidden(rel: &str) -> bool {
    rel.split('/')
        .any(|p| p.starts_with('_') || p.starts_with('.'))
}

/// Lists the input files of `uri`: one file, every supported file under a prefix/directory, or
/// those matching a glob. Sorted by key.
pub async fn list_inputs(uri: &str, s3: &S3Options) -> Result<Vec<InputFile>, BatchError> {
    let (base_uri, pattern) = match uri.find(['*', '?', '[']) {
        Some(i) => {
            let cut = uri[..i].rfind('/').map(|j| j + 1).unwrap_or(0);
            (&uri[..cut], Some(&uri[cut..]))
        }
        None => (uri, None),
    };
    let base = Location::open(base_uri.trim_end_matches('/'), s3).await?;
    let mut files = Vec::new();
    if pattern.is_none()
        && !uri.ends_with('/')
        && let Some(info) = base.store.head(&base.key).await?
    {
        let name = base.key.rsplit('/').next().unwrap_or(&base.key).to_string();
        let format = InputFormat::from_name(&name).ok_or_else(|| {
            BatchError::Input(format!(
                "{uri}: unknown input format; name the file *.parquet, *.csv or *.jsonl"
            ))
        })?;
        files.push(InputFile {
            key: base.key.clone(),
            rel: name,
            info,
            format,
        });
        return Ok(files);
    }
    for info in base.store.list_recursive(&base.key).await? {
        let rel = match base.key.is_empty() {
            true => info.key.clone(),
            false => match info.key.strip_prefix(&format!("{}/", base.key)) {
                Some(r) => r.to_string(),
                None => continue,
            },
        };
        if hidden(&rel) {
            continue;
        }
        if let Some(p) = pattern
            && !glob_match(p, &rel)
        {
            continue;
        }
        let Some(format) = InputFormat::from_name(&rel) else {
            continue;
        };
        files.push(InputFile {
            key: info.key.clone(),
            rel,
            info,
            format,
        });
    }
    files.sort_by(|a, b| a.key.cmp(&b.key));
    if files.is_empty() {
        return Err(BatchError::Input(format!(
            "no input files (*.parquet, *.csv, *.jsonl) at {uri}"
        )));
    }
    Ok(files)
}

/// A local path with the input's contents: the file itself when local, else a download into
/// `scratch` (removed when the guard drops).
pub enum LocalInput {
    InPlace(PathBuf),
    Downloaded(tempfile::TempPath),
}

impl LocalInput {
    pub fn path(&self) -> &Path {
        match self {
            LocalInput::InPlace(p) => p,
            LocalInput::Downloaded(p) => p,
        }
    }
}

pub async fn fetch(
    store: &Store,
    file: &InputFile,
    scratch: &Path,
) -> Result<LocalInput, BatchError> {
    match store {
        Store::Local(s) => Ok(LocalInput::InPlace(s.path(&file.key))),
        Store::S3(_) => {
            let tmp = tempfile::Builder::new()
                .prefix("ferry-batch-input-")
                .tempfile_in(scratch)
                .map_err(|e| BatchError::Io {
                    path: scratch.to_path_buf(),
                    message: e.to_string(),
                })?
                .into_temp_path();
            if !store.download_to(&file.key, &tmp).await? {
                return Err(BatchError::Input(format!(
                    "{} disappeared while the job ran",
                    file.key
                )));
            }
            Ok(LocalInput::Downloaded(tmp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.parquet", "a.parquet"));
        assert!(!glob_match("*.parquet", "d/a.parquet"));
        assert!(glob_match("**/*.parquet", "d/e/a.parquet"));
        assert!(glob_match("**/*.parquet", "a.parquet"));
        assert!(glob_match(
            "day=2024-01-0[12]/*.csv",
            "day=2024-01-02/x.csv"
        ));
        assert!(!glob_match(
            "day=2024-01-0[12]/*.csv",
            "day=2024-01-03/x.csv"
        ));
        assert!(glob_match("part-?.jsonl", "part-7.jsonl"));
        assert!(!glob_match("part-?.jsonl", "part-17.jsonl"));
    }

    #[test]
    fn formats_and_hidden() {
        assert_eq!(
            InputFormat::from_name("x.PARQUET"),
            Some(InputFormat::Parquet)
        );
        assert_eq!(InputFormat::from_name("x.ndjson"), Some(InputFormat::Jsonl));
        assert_eq!(InputFormat::from_name("x.txt"), None);
        assert!(hidden("_markers/a.json"));
        assert!(hidden("d/.tmp-x"));
        assert!(!hidden("d/a.parquet"));
    }
}
