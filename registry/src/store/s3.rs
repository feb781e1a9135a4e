use super::ObjectInfo;
use crate::RegistryError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// How to reach an S3 (or S3-compatible) store, beyond the AWS SDK's environment and profile
/// chain.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible store (MinIO, Ceph, moto…). `AWS_ENDPOINT_URL_S3` and
    /// `AWS_ENDPOINT_URL` work too, through the SDK.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default: on when a custom endpoint is
    /// set, off for AWS.
    pub path_style: Option<bool>,
    /// Region; default: the SDK chain (`AWS_REGION`, profile). A region is always required.
    pub region: Option<String>,
}

/// A registry under `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix without a trailing slash; may be empty.
    prefix: String,
    uri: String,
}

/// Splits `s3://bucket/prefix` into bucket and prefix.
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("an S3 registry URI starts with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(invalid(
            "write s3://bucket/prefix with a bucket name of 3-63 lowercase letters, digits, dots or hyphens",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == ".." || p == ".") {
        return Err(invalid("the prefix must not contain `.` or `..` parts"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Whether the environment points the SDK at a custom endpoint.
fn env_endpoint() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

impl S3Store {
    pub async fn connect(uri: &str, options: &S3Options) -> Result<S3Store, RegistryError> {
        let (bucket, prefix) = parse_s3_uri(uri)?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none_or(|r| r.as_ref().trim().is_empty()) {
            return Err(RegistryError::Config(format!(
                "no AWS region for {uri}: set AWS_REGION (or a profile region), or `registry.region` in the config"
            )));
        }
        let custom_endpoint = options.endpoint.is_some() || env_endpoint();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build();
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(options.path_style.unwrap_or(custom_endpoint))
            .timeout_config(timeouts);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            uri: uri.to_string(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// The listing prefix for the "directory" `key`: ends with `/` unless it is the bucket root.
    fn dir_prefix(&self, key: &str) -> String {
        let full = self.full_key(key.trim_end_matches('/'));
        if full.is_empty() {
            full
        } else {
            format!("{full}/")
        }
    }

    fn error(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<impl std::error::Error + Send + Sync + 'static, HttpResponse>,
    ) -> RegistryError {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let unavailable = matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        ) || status.is_some_and(|s| s >= 500);
        let message = DisplayErrorContext(&err).to_string();
        let key = format!("s3://{}/{}", self.bucket, self.full_key(key));
        if unavailable {
            RegistryError::Unavailable {
                registry: self.uri.clone(),
                operation,
                key,
                message,
            }
        } else {
            RegistryError::Store {
                registry: self.uri.clone(),
                operation,
                key,
                message,
            }
        }
    }

    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(None);
            }
            Err(e) => return Err(self.error("GetObject", key, e)),
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| RegistryError::Unavailable {
                registry: self.uri.clone(),
                operation: "GetObject",
                key: key.to_string(),
                message: e.to_string(),
            })?;
        Ok(Some(bytes.to_vec()))
    }

    /// Names directly under the "directory" `key` (common prefixes and objects).
    pub async fn children(&self, key: &str) -> Result<Vec<String>, RegistryError> {
        let prefix = self.dir_prefix(key);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", key, e))?;
            for p in page.common_prefixes() {
                if let Some(name) = p.prefix().and_then(|p| p.strip_prefix(&prefix)) {
                    names.push(name.trim_end_matches('/').to_string());
                }
            }
            for object in page.contents() {
                if let Some(name) = object.key().and_then(|k| k.strip_prefix(&prefix)) {
                    names.push(name.to_string());
                }
            }
        }
        names.retain(|n| !n.is_empty());
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub async fn list_recursive(&self, key: &str) -> Result<Vec<ObjectInfo>, RegistryError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let (mut page, next) = self.list_page(key, token).await?;
            out.append(&mut page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// One page (at most 1000 objects, S3's page size) of the objects under the directory
    /// `key`, keys relative to the store root. Pass the returned continuation token to get the
    /// next page; `None` means this was the last one. Lets callers walk a large prefix without
    /// holding its whole listing.
    pub async fn list_page(
        &self,
        key: &str,
        token: Option<String>,
    ) -> Result<(Vec<ObjectInfo>, Option<String>), RegistryError> {
        let prefix = self.dir_prefix(key);
        let relative_to = self.dir_prefix("");
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", key, e))?;
        let mut out = Vec::with_capacity(page.contents().len());
        for object in page.contents() {
            let Some(rel) = object.key().and_then(|k| k.strip_prefix(&relative_to)) else {
                continue;
            };
            out.push(ObjectInfo {
                key: rel.to_string(),
                size: object.size().unwrap_or(0).max(0) as u64,
                modified: object.last_modified().and_then(|t| {
                    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.secs().max(0) as u64))
                }),
                etag: object.e_tag().map(str::to_string),
            });
        }
        let next = if page.is_truncated() == Some(true) {
            page.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok((out, next))
    }

    /// Overwrites `key` (S3 puts are atomic: readers see the old or the new object).
    pub async fn write(&self, key: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        self.put(key, ByteStream::from(bytes.to_vec())).await
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<(), RegistryError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(body)
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }

    /// A request body streamed from a local file.
    async fn file_body(source: &Path) -> Result<ByteStream, RegistryError> {
        ByteStream::from_path(source)
            .await
            .map_err(|e| RegistryError::Io {
                path: source.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Creates `key` only if it does not exist: a HEAD check, then a put with
    /// `If-None-Match: *`, so a store that enforces conditional writes rejects a concurrent
    /// publisher (412/409 -> `Ok(false)`). Stores that ignore the header still get the check.
    pub async fn create(&self, key: &str, body: ByteStream) -> Result<bool, RegistryError> {
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .body(body)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error("PutObject", key, e)),
        }
    }

    pub async fn create_from_file(&self, key: &str, source: &Path) -> Result<bool, RegistryError> {
        self.create(key, Self::file_body(source).await?).await
    }

    /// Size, modification time and ETag of `key`; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, RegistryError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match head {
            Ok(h) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: h.content_length().unwrap_or(0).max(0) as u64,
                modified: h.last_modified().and_then(|t| {
                    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.secs().max(0) as u64))
                }),
                etag: h.e_tag().map(str::to_string),
            })),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(self.error("HeadObject", key, e)),
        }
    }

    /// Overwrites `key` with a local file, streamed in one PutObject (atomic for readers).
    pub async fn write_from_file(&self, key: &str, source: &Path) -> Result<(), RegistryError> {
        self.put(key, Self::file_body(source).await?).await
    }

    /// Deletes `key` (S3 deletes of absent keys succeed).
    pub async fn delete(&self, key: &str) -> Result<(), RegistryError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, e))?;
        Ok(())
    }

    /// Streams `key` into `dest` (created), hashing as it goes; returns the hex sha256.
    /// Never holds the whole object in memory.
    pub async fn download(&self, key: &str, dest: &Path) -> Result<Option<String>, RegistryError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let mut output = match result {
            Ok(output) => output,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(None);
            }
            Err(e) => return Err(self.error("GetObject", key, e)),
        };
        let io = |e: std::io::Error| RegistryError::cache_write(dest, e);
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        loop {
            let chunk = output
                .body
                .try_next()
                .await
                .map_err(|e| RegistryError::Unavailable {
                    registry: self.uri.clone(),
                    operation: "GetObject",
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
            let Some(chunk) = chunk else { break };
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(Some(hex::encode(hasher.finalize())))
    }
}
