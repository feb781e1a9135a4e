//! The MLflow Model Registry as a ferry registry: `name@alias`, `name@N` and bare `name`
//! resolve through the tracking server's REST API, and a version's ONNX flavor is downloaded
//! (through the server's artifact proxy, from S3, or from a local path) into the same
//! verified cache S3 registries use, with a `model.yaml` ferry writes from `MLmodel` and the
//! ONNX graph.
//!
//! MLflow records no digests. A download is complete when every file has the size the
//! artifact store reports (and HTTP bodies their `Content-Length`); ferry computes each file's
//! sha256 while streaming it and pins those digests in the cached `model.yaml`, so from then
//! on the copy is verified like any other, and `ferry models import` publishes them.

mod mlmodel;

use crate::cache::{Cache, Staging};
use crate::manifest::is_safe_relative_path;
use crate::onnx_graph;
use crate::store::{S3Options, S3Store};
use crate::{
    Manifest, ModelFormat, ModelInfo, ModelRef, RegistryError, Selector, VerifiedModel,
    VersionInfo, is_valid_name,
};
use mlmodel::MLMODEL_FILE;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// How long one REST call may take; artifact downloads have a read timeout instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a registry URI names an MLflow tracking server (`mlflow`, `mlflow+http://…`).
pub fn is_mlflow_uri(uri: &str) -> bool {
    uri == "mlflow" || uri.starts_with("mlflow+")
}

/// Credentials, as MLflow's own clients take them from the environment.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    /// `MLFLOW_TRACKING_TOKEN`.
    Bearer(String),
    /// `MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD` (MLflow prefers them to a token).
    Basic {
        username: String,
        password: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(***)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}:***)"),
        }
    }
}

/// Where the tracking server is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `http(s)://host[:port][/prefix]/`, always ending with `/`.
    pub base: Url,
    pub auth: Auth,
    /// `MLFLOW_TRACKING_SERVER_CERT_PATH`: a CA bundle (PEM) to trust besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// `MLFLOW_TRACKING_INSECURE_TLS=true`: skip certificate checks, as MLflow's clients do.
    pub insecure_tls: bool,
}

impl Endpoint {
    /// `mlflow+http://host:port/prefix`: how logs and errors name the registry.
    pub fn display(&self) -> String {
        format!("mlflow+{}", self.base.as_str().trim_end_matches('/'))
    }

    /// Parses `registry.uri` (`mlflow`, `mlflow+http(s)://…`), reading credentials (and, for
    /// `mlflow`, the server) from the environment through `env`.
    pub fn parse(
        uri: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidUri {
            uri: uri.to_string(),
            reason,
        };
        let var = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let url = if uri == "mlflow" {
            let Some(tracking) = var("MLFLOW_TRACKING_URI") else {
                return Err(RegistryError::Config(
                    "`registry.uri: mlflow` reads the tracking server from MLFLOW_TRACKING_URI, which is not set: set it (e.g. http://mlflow:5000) or write `registry.uri: mlflow+http://HOST:PORT`".into(),
                ));
            };
            let tracking = tracking.trim().to_string();
            let plain = tracking.strip_prefix("mlflow+").unwrap_or(&tracking);
            if !(plain.starts_with("http://") || plain.starts_with("https://")) {
                return Err(RegistryError::Config(format!(
                    "MLFLOW_TRACKING_URI is {tracking:?}: ferry reads MLflow through its REST API, so it must be an http:// or https:// URL of a tracking server (file, sqlite and databricks tracking URIs are not supported)"
                )));
            }
            plain.to_string()
        } else {
            let Some(rest) = uri.strip_prefix("mlflow+") else {
                return Err(invalid(
                    "an MLflow registry URI is `mlflow` or `mlflow+http(s)://HOST:PORT`".into(),
                ));
            };
            if !(rest.starts_with("http://") || rest.starts_with("https://")) {
                return Err(invalid(
                    "write mlflow+http://HOST:PORT or mlflow+https://HOST[:PORT][/PATH]".into(),
                ));
            }
            rest.to_string()
        };
        let mut base = Url::parse(&url).map_err(|e| invalid(format!("{url:?}: {e}")))?;
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the tracking server URL has no host".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // Registry URIs are logged; secrets belong in the environment. The error names
            // the URI without them.
            let mut shown = base.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            return Err(RegistryError::InvalidUri {
                uri: format!("mlflow+{shown}"),
                reason: "do not put credentials in the URI: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN".into(),
            });
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "the tracking server URL takes no query or fragment".into(),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let auth = match (
            var("MLFLOW_TRACKING_USERNAME"),
            var("MLFLOW_TRACKING_PASSWORD"),
            var("MLFLOW_TRACKING_TOKEN"),
        ) {
            (Some(username), Some(password), _) => Auth::Basic { username, password },
            (Some(_), None, _) => {
                return Err(RegistryError::Config(
                    "MLFLOW_TRACKING_USERNAME is set but MLFLOW_TRACKING_PASSWORD is not: set both for basic authentication, or MLFLOW_TRACKING_TOKEN for a bearer token".into(),
                ));
            }
            (None, Some(_), _) => {
                return Err(RegistryError::Config(
                    "MLFLOW_TRACKING_PASSWORD is set but MLFLOW_TRACKING_USERNAME is not: set both for basic authentication, or MLFLOW_TRACKING_TOKEN for a bearer token".into(),
                ));
            }
            (None, None, Some(token)) => Auth::Bearer(token.trim().to_string()),
            (None, None, None) => Auth::None,
        };
        let insecure_tls = match var("MLFLOW_TRACKING_INSECURE_TLS")
            .as_deref()
            .map(str::trim)
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                return Err(RegistryError::Config(format!(
                    "MLFLOW_TRACKING_INSECURE_TLS is {v:?}: write true or false"
                )));
            }
        };
        let ca_bundle = var("MLFLOW_TRACKING_SERVER_CERT_PATH").map(PathBuf::from);
        if insecure_tls && ca_bundle.is_some() {
            return Err(RegistryError::Config(
                "set MLFLOW_TRACKING_INSECURE_TLS or MLFLOW_TRACKING_SERVER_CERT_PATH, not both"
                    .into(),
            ));
        }
        Ok(Endpoint {
            base,
            auth,
            ca_bundle,
            insecure_tls,
        })
    }
}

/// An MLflow model URI for `ferry models import`: `mlflow+http(s)://HOST[:PORT][/PATH]/NAME/VERSION`
/// (VERSION a number or an alias), or MLflow's own `models:/NAME/VERSION` /
/// `models:/NAME@ALIAS` with the server taken from MLFLOW_TRACKING_URI. Returns the registry
/// URI and the model reference.
pub fn parse_model_uri(uri: &str) -> Result<(String, ModelRef), RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let reference = |name: &str, selector: &str| -> Result<ModelRef, RegistryError> {
        ModelRef::parse(&format!("{name}@{selector}")).map_err(|e| match e {
            RegistryError::InvalidModelRef { reason, .. } => invalid(&reason),
            other => other,
        })
    };
    if let Some(rest) = uri.strip_prefix("models:/") {
        let rest = rest.trim_end_matches('/');
        let model = match rest.split_once('/') {
            Some((name, version)) => reference(name, version)?,
            None => match rest.split_once('@') {
                Some((name, alias)) => reference(name, alias)?,
                None => return Err(invalid("write models:/NAME/VERSION or models:/NAME@ALIAS")),
            },
        };
        return Ok(("mlflow".to_string(), model));
    }
    if !uri.starts_with("mlflow+") {
        return Err(invalid(
            "write mlflow+http://HOST:PORT/NAME/VERSION or models:/NAME/VERSION (with MLFLOW_TRACKING_URI set)",
        ));
    }
    let trimmed = uri.trim_end_matches('/');
    let scheme_end = trimmed.find("://").map(|i| i + 3).unwrap_or(0);
    let parts: Vec<&str> = trimmed[scheme_end..].rsplitn(3, '/').collect();
    let [selector, name, server] = parts[..] else {
        return Err(invalid(
            "the URI must end with /NAME/VERSION, e.g. mlflow+http://mlflow:5000/churn/3",
        ));
    };
    let model = reference(name, selector)?;
    Ok((format!("{}{server}", &trimmed[..scheme_end]), model))
}

/// An MLflow tracking server as a registry.
#[derive(Debug, Clone)]
pub(crate) struct MlflowRegistry {
    endpoint: Endpoint,
    display: String,
    http: reqwest::Client,
    s3: S3Options,
    cache: Cache,
}

/// A REST answer other than success.
enum CallError {
    /// Unreachable, 5xx, unreadable answer, refused credentials: already a registry error.
    Registry(RegistryError),
    /// MLflow refused the request (4xx) with this error code and message.
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
struct ModelVersion {
    version: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_message: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<i64>,
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Deserialize)]
struct ModelVersionReply {
    model_version: ModelVersion,
}

#[derive(Deserialize)]
struct AliasEntry {
    alias: String,
    version: String,
}

#[derive(Deserialize)]
struct RegisteredModel {
    #[serde(default)]
    aliases: Vec<AliasEntry>,
}

#[derive(Deserialize)]
struct RegisteredModelReply {
    registered_model: RegisteredModel,
}

#[derive(Deserialize)]
struct SearchVersionsReply {
    #[serde(default)]
    model_versions: Vec<ModelVersion>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ModelName {
    name: String,
}

#[derive(Deserialize)]
struct SearchModelsReply {
    #[serde(default)]
    registered_models: Vec<ModelName>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct DownloadUriReply {
    artifact_uri: String,
}

#[derive(Deserialize)]
struct ArtifactListReply {
    #[serde(default)]
    files: Vec<ArtifactEntry>,
}

#[derive(Deserialize)]
struct ArtifactEntry {
    path: String,
    #[serde(default)]
    is_dir: bool,
    /// int64 in MLflow's protobuf; JSON may carry it as a number or a string.
    #[serde(default)]
    file_size: Option<serde_json::Value>,
}

/// Where a version's artifacts are, as `get-download-uri` answers.
enum ArtifactSource {
    /// The tracking server's artifact proxy (`mlflow-artifacts:` URIs): files are
    /// `{base}api/2.0/mlflow-artifacts/artifacts/{path}/{file}`.
    Proxy { base: Url, path: String },
    /// `s3://bucket/prefix`, read with the S3 registry's client.
    S3(S3Store),
    /// A local directory (`file://` or a path): the tracking server stores artifacts on a
    /// file system ferry shares.
    Local(PathBuf),
}

impl MlflowRegistry {
    pub(crate) fn open(
        uri: &str,
        s3: &S3Options,
        cache_dir: &Path,
    ) -> Result<MlflowRegistry, RegistryError> {
        let endpoint = Endpoint::parse(uri, &|k| std::env::var(k).ok())?;
        let display = endpoint.display();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &endpoint.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!(
                    "MLFLOW_TRACKING_SERVER_CERT_PATH {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "MLFLOW_TRACKING_SERVER_CERT_PATH {} is not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if endpoint.insecure_tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(format!("MLflow HTTP client: {e}")))?;
        let id = format!(
            "{}-{}{}",
            endpoint.base.host_str().unwrap_or_default(),
            endpoint.base.port_or_known_default().unwrap_or_default(),
            endpoint.base.path().trim_end_matches('/')
        );
        let cache = Cache::for_mlflow(cache_dir, &id);
        Ok(MlflowRegistry {
            endpoint,
            display,
            http,
            s3: s3.clone(),
            cache,
        })
    }

    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    pub(crate) fn cache_dir(&self) -> &Path {
        self.cache.root()
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.endpoint.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
    }

    fn unavailable(&self, operation: &'static str, key: &str, message: String) -> RegistryError {
        RegistryError::Unavailable {
            registry: self.display.clone(),
            operation,
            key: key.to_string(),
            message,
        }
    }

    fn refused(&self, operation: &'static str, key: &str, message: String) -> RegistryError {
        RegistryError::Store {
            registry: self.display.clone(),
            operation,
            key: key.to_string(),
            message,
        }
    }

    /// GET `api/2.0/mlflow/{endpoint}?{query}` as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        query: &[(&str, &str)],
    ) -> Result<T, CallError> {
        let key: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = key.join("&");
        let url = self
            .endpoint
            .base
            .join("api/2.0/mlflow/")
            .and_then(|u| u.join(endpoint))
            .map_err(|e| CallError::Registry(self.refused(endpoint, &key, e.to_string())))?;
        let request = self
            .authorize(self.http.get(url))
            .query(query)
            .timeout(CALL_TIMEOUT);
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Registry(self.unavailable(endpoint, &key, error_chain(&e))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Registry(self.unavailable(endpoint, &key, error_chain(&e))))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                CallError::Registry(self.refused(
                    endpoint,
                    &key,
                    format!(
                        "unexpected answer ({e}): {}; is registry.uri the MLflow tracking server?",
                        snippet(&body)
                    ),
                ))
            });
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CallError::Registry(self.unavailable(
                endpoint,
                &key,
                format!("HTTP {status}: {}", snippet(&body)),
            )));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CallError::Registry(self.refused(
                endpoint,
                &key,
                format!(
                    "HTTP {status}: {}; set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, to credentials the server accepts",
                    snippet(&body)
                ),
            )));
        }
        #[derive(Deserialize)]
        struct ApiError {
            error_code: String,
            #[serde(default)]
            message: String,
        }
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => Err(CallError::Api {
                status,
                code: e.error_code,
                message: e.message,
            }),
            // Not MLflow's error format: something else answers at this address.
            Err(_) => Err(CallError::Registry(self.refused(
                endpoint,
                &key,
                format!(
                    "HTTP {status}: {}; is registry.uri the MLflow tracking server (its REST API is under /api/2.0/mlflow/)?",
                    snippet(&body)
                ),
            ))),
        }
    }

    /// A refused call as a registry error.
    fn api_error(&self, endpoint: &'static str, key: &str, error: CallError) -> RegistryError {
        match error {
            CallError::Registry(e) => e,
            CallError::Api {
                status,
                code,
                message,
            } => self.refused(endpoint, key, format!("{message} ({code}, HTTP {status})")),
        }
    }

    fn not_found(&self, name: &str) -> RegistryError {
        RegistryError::ModelNotFound {
            name: name.to_string(),
            registry: self.display.clone(),
        }
    }

    async fn registered_model(&self, name: &str) -> Result<RegisteredModel, RegistryError> {
        const OP: &str = "registered-models/get";
        match self
            .call::<RegisteredModelReply>(OP, &[("name", name)])
            .await
        {
            Ok(reply) => Ok(reply.registered_model),
            Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(self.not_found(name))
            }
            Err(e) => Err(self.api_error(OP, name, e)),
        }
    }

    async fn model_version(&self, name: &str, version: u64) -> Result<ModelVersion, RegistryError> {
        const OP: &str = "model-versions/get";
        let v = version.to_string();
        match self
            .call::<ModelVersionReply>(OP, &[("name", name), ("version", &v)])
            .await
        {
            Ok(reply) => Ok(reply.model_version),
            Err(CallError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(RegistryError::VersionNotFound {
                    name: name.to_string(),
                    version,
                    available: self.versions(name).await?,
                })
            }
            Err(e) => Err(self.api_error(OP, &format!("{name}/{version}"), e)),
        }
    }

    /// Every version of `name` (any status), highest first.
    async fn search_versions(&self, name: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        const OP: &str = "model-versions/search";
        // Model names are validated ([a-z0-9_-]), so quoting them cannot break the filter.
        let filter = format!("name='{name}'");
        let mut token = String::new();
        let mut out = Vec::new();
        loop {
            let mut query = vec![("filter", filter.as_str()), ("max_results", "1000")];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page: SearchVersionsReply = self
                .call(OP, &query)
                .await
                .map_err(|e| self.api_error(OP, &filter, e))?;
            out.extend(page.model_versions);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = t,
                None => break,
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.version.parse::<u64>().unwrap_or(0)));
        Ok(out)
    }

    /// Version numbers of `name`, ascending; `ModelNotFound` when MLflow has no such model.
    pub(crate) async fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        let found = self.search_versions(name).await?;
        if found.is_empty() {
            self.registered_model(name).await?;
        }
        let mut versions: Vec<u64> = found
            .iter()
            .filter_map(|v| v.version.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    pub(crate) async fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        let model = self.registered_model(name).await?;
        let mut out: Vec<(String, u64)> = model
            .aliases
            .into_iter()
            .filter_map(|a| Some((a.alias, a.version.parse().ok()?)))
            .collect();
        out.sort();
        Ok(out)
    }

    pub(crate) async fn models(&self) -> Result<Vec<String>, RegistryError> {
        const OP: &str = "registered-models/search";
        let mut token = String::new();
        let mut names = Vec::new();
        loop {
            let mut query = vec![("max_results", "1000")];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page: SearchModelsReply = self
                .call(OP, &query)
                .await
                .map_err(|e| self.api_error(OP, "", e))?;
            names.extend(page.registered_models.into_iter().map(|m| m.name));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = t,
                None => break,
            }
        }
        let (mut servable, other): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| is_valid_name(n));
        if !other.is_empty() {
            tracing::info!(registry = %self.display, models = ?other, "MLflow models whose names are not ferry model names ([a-z0-9][a-z0-9_-]{{0,62}}) cannot be served and are not listed.");
        }
        servable.sort();
        Ok(servable)
    }

    /// The version `model` points at now: one REST call for `@alias` and `@version` (what
    /// polling costs), a search for a bare name (its highest READY version).
    pub(crate) async fn resolve(&self, model: &ModelRef) -> Result<u64, RegistryError> {
        let name = model.name.as_str();
        let found = match &model.selector {
            Selector::Version(v) => match self.model_version(name, *v).await {
                // A verified cached copy answers while MLflow is down, as for S3 registries.
                Err(e) if e.is_unavailable() && self.cache.lookup(name, *v).is_some() => {
                    return Ok(*v);
                }
                other => other?,
            },
            Selector::Alias(alias) => self.alias(name, alias).await?,
            Selector::Latest => self
                .search_versions(name)
                .await?
                .into_iter()
                .find(|v| v.status.as_deref().is_none_or(|s| s == "READY"))
                .ok_or_else(|| RegistryError::NoVersions {
                    name: name.to_string(),
                })?,
        };
        let version = self.version_number(name, &found)?;
        self.check_ready(name, version, &found)?;
        Ok(version)
    }

    async fn alias(&self, name: &str, alias: &str) -> Result<ModelVersion, RegistryError> {
        const OP: &str = "registered-models/alias";
        match self
            .call::<ModelVersionReply>(OP, &[("name", name), ("alias", alias)])
            .await
        {
            Ok(reply) => Ok(reply.model_version),
            // MLflow 3 answers an unknown alias with 400 INVALID_PARAMETER_VALUE and an unknown
            // model with 404; which one it is (and what exists) comes from the model itself.
            Err(CallError::Api {
                status,
                code,
                message,
            }) => {
                let aliases = self.aliases(name).await?;
                if aliases.iter().any(|(a, _)| a == alias) {
                    return Err(self.refused(
                        OP,
                        &format!("{name}@{alias}"),
                        format!("{message} ({code}, HTTP {status})"),
                    ));
                }
                Err(RegistryError::AliasNotFound {
                    name: name.to_string(),
                    alias: alias.to_string(),
                    available: aliases.into_iter().map(|(a, _)| a).collect(),
                })
            }
            Err(e) => Err(self.api_error(OP, &format!("{name}@{alias}"), e)),
        }
    }

    fn version_number(&self, name: &str, found: &ModelVersion) -> Result<u64, RegistryError> {
        match found.version.parse::<u64>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(self.refused(
                "model-versions/get",
                name,
                format!(
                    "MLflow answered version {:?}, not a positive number",
                    found.version
                ),
            )),
        }
    }

    /// A version still being registered (or whose registration failed) has no artifacts to
    /// load yet; resolving fails (and polling retries) instead of loading it and failing.
    fn check_ready(
        &self,
        name: &str,
        version: u64,
        found: &ModelVersion,
    ) -> Result<(), RegistryError> {
        match found.status.as_deref() {
            None | Some("READY") => Ok(()),
            Some(status) => Err(RegistryError::Mlflow {
                name: name.to_string(),
                version,
                message: format!(
                    "its status is {status}{}; ferry loads it once MLflow reports READY",
                    found
                        .status_message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
            }),
        }
    }

    /// `name@version` in the verified cache, downloading it first when the cache has no copy of
    /// this registration of it.
    pub(crate) async fn fetch(
        &self,
        name: &str,
        version: u64,
    ) -> Result<VerifiedModel, RegistryError> {
        let cached = self.cache.lookup(name, version);
        let found = match self.model_version(name, version).await {
            Ok(found) => found,
            Err(e) if e.is_unavailable() => {
                return match cached {
                    Some((manifest, dir)) => {
                        tracing::warn!(registry = %self.display, model = name, version, error = %e, "MLflow is unreachable; loading the verified cached copy.");
                        Ok(VerifiedModel {
                            manifest,
                            dir,
                            from_cache: true,
                        })
                    }
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.check_ready(name, version, &found)?;
        if let Some((manifest, dir)) = cached {
            if same_registration(&manifest, &found) {
                return Ok(VerifiedModel {
                    manifest,
                    dir,
                    from_cache: true,
                });
            }
            tracing::info!(registry = %self.display, model = name, version, "The cached copy is of an earlier registration of this MLflow version (deleted and registered again); downloading it again.");
            self.cache.evict(name, version);
        }
        let (manifest, dir) = self.download(name, version, &found).await?;
        Ok(VerifiedModel {
            manifest,
            dir,
            from_cache: false,
        })
    }

    async fn download(
        &self,
        name: &str,
        version: u64,
        found: &ModelVersion,
    ) -> Result<(Manifest, PathBuf), RegistryError> {
        const OP: &str = "model-versions/get-download-uri";
        let v = version.to_string();
        let artifact_uri = self
            .call::<DownloadUriReply>(OP, &[("name", name), ("version", &v)])
            .await
            .map_err(|e| self.api_error(OP, &format!("{name}/{version}"), e))?
            .artifact_uri;
        let bad = |message: String| RegistryError::Mlflow {
            name: name.to_string(),
            version,
            message,
        };
        let source = self
            .artifact_source(&artifact_uri)
            .await
            .map_err(|e| match e {
                Ok(message) => bad(message),
                Err(e) => e,
            })?;
        let mut staging = self.cache.stage(name, version)?;
        let mut sizes = Sizes::default();
        let missing = |file: &str, why: &str| {
            bad(format!(
                "{why}, but {artifact_uri}/{file} does not exist: the artifacts were deleted or never uploaded"
            ))
        };
        if !self
            .fetch_file(&source, MLMODEL_FILE, &mut staging, &mut sizes)
            .await?
        {
            return Err(missing(
                MLMODEL_FILE,
                "an MLflow model's artifacts start with an MLmodel file",
            ));
        }
        let mlmodel_path = staging.path().join(MLMODEL_FILE);
        let text = std::fs::read_to_string(&mlmodel_path)
            .map_err(|e| bad(format!("{MLMODEL_FILE} is not UTF-8 text: {e}")))?;
        let mlmodel = mlmodel::parse(&text).map_err(&bad)?;
        let data = mlmodel.onnx_data.trim_start_matches("./").to_string();
        if !is_safe_relative_path(&data) {
            return Err(bad(format!(
                "{MLMODEL_FILE} `flavors.onnx.data` {data:?} must be a relative path inside the model's artifacts"
            )));
        }
        if !self
            .fetch_file(&source, &data, &mut staging, &mut sizes)
            .await?
        {
            return Err(missing(
                &data,
                &format!("{MLMODEL_FILE} names `{data}` as the ONNX file (flavors.onnx.data)"),
            ));
        }
        let onnx_path = staging.path().join(&data);
        let info = tokio::task::spawn_blocking(move || {
            std::fs::read(&onnx_path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| onnx_graph::inspect(&bytes))
        })
        .await
        .map_err(|e| bad(format!("reading the ONNX file failed: {e}")))?
        .map_err(|e| bad(format!("`{data}` is {e}")))?;
        let data_dir = data.rsplit_once('/').map(|(dir, _)| dir);
        let mut files = vec![MLMODEL_FILE.to_string()];
        for location in &info.external_files {
            let file = match data_dir {
                Some(dir) => format!("{dir}/{location}"),
                None => location.clone(),
            };
            if !is_safe_relative_path(&file) || file == data {
                return Err(bad(format!(
                    "`{data}` keeps tensors in {location:?}, which is not a file beside it"
                )));
            }
            if !self
                .fetch_file(&source, &file, &mut staging, &mut sizes)
                .await?
            {
                return Err(missing(
                    &file,
                    &format!("`{data}` keeps tensors in `{location}` (ONNX external data)"),
                ));
            }
            files.push(file);
        }
        let (signature, signature_from) = match (mlmodel.signature, info.signature) {
            (Ok(logged), Ok(graph)) if same_tensor_names(&logged, &graph) => (logged, "MLmodel"),
            (Ok(logged), Err(_)) => (logged, "MLmodel"),
            (logged, Ok(graph)) => {
                let why = match logged {
                    Ok(_) => "its tensor names are not the graph's".to_string(),
                    Err(why) => why,
                };
                tracing::info!(registry = %self.display, model = name, version, reason = %why, "Not using the MLmodel signature; serving the ONNX graph's.");
                (graph, "onnx graph")
            }
            (_, Err(why)) => return Err(bad(format!("`{data}`: {why}"))),
        };
        let digest = |file: &str| staging.digest(file).unwrap_or_default();
        let mut lineage = serde_json::json!({
            "tracking_uri": self.display,
            "name": name,
            "version": version.to_string(),
            "source": found.source,
            "artifact_uri": artifact_uri,
            "signature_from": signature_from,
        });
        if let Some(run_id) = found.run_id.as_deref().filter(|r| !r.is_empty()) {
            lineage["run_id"] = run_id.into();
        }
        if let Some(created) = found.creation_timestamp {
            lineage["creation_timestamp"] = created.into();
        }
        let manifest = Manifest {
            name: name.to_string(),
            version,
            format: ModelFormat::Onnx,
            sha256: digest(&data),
            artifact: data.clone(),
            files: files.iter().map(|f| (f.clone(), digest(f))).collect(),
            inputs: signature.inputs,
            outputs: signature.outputs,
            features: None,
            preprocess: Vec::new(),
            architecture: serde_json::Value::Null,
            metadata: BTreeMap::from([("mlflow".to_string(), lineage)]),
        };
        manifest
            .validate()
            .map_err(|e| bad(format!("cannot be described as a ferry model: {e}")))?;
        let yaml = serde_yaml::to_string(&manifest).expect("a manifest serializes. This is a bug.");
        let dir = self.cache.commit(staging, &yaml)?;
        tracing::info!(registry = %self.display, model = name, version, artifact_uri = %artifact_uri, signature_from, "Downloaded MLflow model version into the cache.");
        Ok((manifest, dir))
    }

    /// Where `artifact_uri` points; `Err(Ok(message))` when ferry cannot read it.
    async fn artifact_source(
        &self,
        artifact_uri: &str,
    ) -> Result<ArtifactSource, Result<String, RegistryError>> {
        let unsupported = || {
            Err(Ok(format!(
                "its artifacts are at {artifact_uri}, which ferry cannot read: it reads mlflow-artifacts: (the tracking server's artifact proxy, `mlflow server --serve-artifacts`), s3:// and local paths"
            )))
        };
        if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/path` is on this server; `mlflow-artifacts://host:port/path`
            // on another one, reached with this server's scheme.
            let (base, path) = match rest.strip_prefix("//") {
                Some(authority_path) => {
                    let (authority, path) = authority_path
                        .split_once('/')
                        .unwrap_or((authority_path, ""));
                    let base =
                        Url::parse(&format!("{}://{authority}/", self.endpoint.base.scheme()))
                            .map_err(|e| Ok(format!("artifact URI {artifact_uri}: {e}")))?;
                    (base, path)
                }
                None => (self.endpoint.base.clone(), rest),
            };
            return Ok(ArtifactSource::Proxy {
                base,
                path: path.trim_matches('/').to_string(),
            });
        }
        if artifact_uri.starts_with("http://") || artifact_uri.starts_with("https://") {
            // MLflow's HTTP artifact repository: the proxy API at an explicit address.
            const API: &str = "/api/2.0/mlflow-artifacts/artifacts";
            return match artifact_uri.split_once(API) {
                Some((server, path)) => Ok(ArtifactSource::Proxy {
                    base: Url::parse(&format!("{}/", server.trim_end_matches('/')))
                        .map_err(|e| Ok(format!("artifact URI {artifact_uri}: {e}")))?,
                    path: path.trim_matches('/').to_string(),
                }),
                None => unsupported(),
            };
        }
        if artifact_uri.starts_with("s3://") {
            return S3Store::connect(artifact_uri.trim_end_matches('/'), &self.s3)
                .await
                .map(ArtifactSource::S3)
                .map_err(Err);
        }
        let local = artifact_uri
            .strip_prefix("file://")
            .or_else(|| artifact_uri.starts_with('/').then_some(artifact_uri));
        match local {
            Some(path) => Ok(ArtifactSource::Local(PathBuf::from(path))),
            None => unsupported(),
        }
    }

    /// Downloads the artifact `file` into the staging directory, checks its size against the
    /// artifact store's, and records its digest; `Ok(false)` when it does not exist.
    async fn fetch_file(
        &self,
        source: &ArtifactSource,
        file: &str,
        staging: &mut Staging,
        sizes: &mut Sizes,
    ) -> Result<bool, RegistryError> {
        let dest = staging.file(file)?;
        let (digest, expected) = match source {
            ArtifactSource::Proxy { base, path } => {
                let Some(digest) = self.proxy_download(base, path, file, &dest).await? else {
                    return Ok(false);
                };
                (digest, self.proxy_size(base, path, file, sizes).await?)
            }
            ArtifactSource::S3(store) => {
                let Some(digest) = store.download(file, &dest).await? else {
                    return Ok(false);
                };
                (digest, store.head(file).await?.map(|o| o.size))
            }
            ArtifactSource::Local(root) => {
                let from = root.join(file);
                let copied = tokio::task::spawn_blocking(move || copy_hashing(&from, &dest))
                    .await
                    .map_err(|e| RegistryError::Io {
                        path: root.join(file),
                        message: e.to_string(),
                    })??;
                let Some((digest, size)) = copied else {
                    return Ok(false);
                };
                (digest, Some(size))
            }
        };
        let actual = std::fs::metadata(staging.path().join(file))
            .map_err(|e| RegistryError::cache_write(staging.path().join(file), e))?
            .len();
        if let Some(expected) = expected
            && expected != actual
        {
            // Retryable: the object may have been replaced while it was read.
            return Err(self.unavailable(
                "download",
                file,
                format!(
                    "got {actual} bytes but the artifact store lists {expected}; the partial download was removed"
                ),
            ));
        }
        staging.record(file, digest)?;
        Ok(true)
    }

    fn proxy_url(&self, base: &Url, path: &str, file: &str) -> Url {
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            segments.extend(["api", "2.0", "mlflow-artifacts", "artifacts"]);
            segments.extend(path.split('/').filter(|s| !s.is_empty()));
            segments.extend(file.split('/'));
        }
        url
    }

    /// Streams one file from the artifact proxy into `dest`, hashing it; `None` on 404.
    async fn proxy_download(
        &self,
        base: &Url,
        path: &str,
        file: &str,
        dest: &Path,
    ) -> Result<Option<String>, RegistryError> {
        const OP: &str = "mlflow-artifacts download";
        let url = self.proxy_url(base, path, file);
        let key = format!("{path}/{file}");
        let mut response = self
            .authorize(self.http.get(url))
            .send()
            .await
            .map_err(|e| self.unavailable(OP, &key, error_chain(&e)))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let message = format!("HTTP {status}: {}", snippet(&body));
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    self.unavailable(OP, &key, message)
                } else {
                    self.refused(OP, &key, message)
                },
            );
        }
        let length = response.content_length();
        let io = |e: std::io::Error| RegistryError::cache_write(dest, e);
        let mut out = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unavailable(OP, &key, error_chain(&e)))?
        {
            hasher.update(&chunk);
            received += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        out.sync_all().await.map_err(io)?;
        if let Some(length) = length
            && length != received
        {
            return Err(self.unavailable(
                OP,
                &key,
                format!("the body ended after {received} of {length} bytes"),
            ));
        }
        Ok(Some(hex::encode(hasher.finalize())))
    }

    /// The size the artifact proxy lists for `file` (one listing per directory).
    async fn proxy_size(
        &self,
        base: &Url,
        path: &str,
        file: &str,
        sizes: &mut Sizes,
    ) -> Result<Option<u64>, RegistryError> {
        const OP: &str = "mlflow-artifacts list";
        let (dir, leaf) = match file.rsplit_once('/') {
            Some((dir, leaf)) => (format!("{path}/{dir}"), leaf),
            None => (path.to_string(), file),
        };
        if !sizes.0.contains_key(&dir) {
            let mut url = base.clone();
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty();
                segments.extend(["api", "2.0", "mlflow-artifacts", "artifacts"]);
            }
            let response = self
                .authorize(self.http.get(url))
                .query(&[("path", dir.as_str())])
                .timeout(CALL_TIMEOUT)
                .send()
                .await
                .map_err(|e| self.unavailable(OP, &dir, error_chain(&e)))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| self.unavailable(OP, &dir, error_chain(&e)))?;
            if !status.is_success() {
                return Err(self.unavailable(
                    OP,
                    &dir,
                    format!("HTTP {status}: {}", snippet(&body)),
                ));
            }
            let listing: ArtifactListReply = serde_json::from_slice(&body).map_err(|e| {
                self.refused(
                    OP,
                    &dir,
                    format!("unexpected answer ({e}): {}", snippet(&body)),
                )
            })?;
            let listed = listing
                .files
                .into_iter()
                .filter(|f| !f.is_dir)
                .filter_map(|f| {
                    let size = match f.file_size? {
                        serde_json::Value::Number(n) => n.as_u64()?,
                        serde_json::Value::String(s) => s.parse().ok()?,
                        _ => return None,
                    };
                    // Entries are relative to the listed directory, or (older servers) to the
                    // artifact root: keep the last part either way.
                    let leaf = f.path.rsplit('/').next().unwrap_or(&f.path).to_string();
                    Some((leaf, size))
                })
                .collect();
            sizes.0.insert(dir.clone(), listed);
        }
        Ok(sizes.0.get(&dir).and_then(|files| files.get(leaf)).copied())
    }

    /// What `ferry models list` shows for an MLflow model: versions, creation times, aliases
    /// and lineage (sizes are not known without downloading).
    pub(crate) async fn describe(&self, name: &str) -> Result<ModelInfo, RegistryError> {
        let aliases: BTreeMap<String, u64> = self.aliases(name).await?.into_iter().collect();
        let mut versions = Vec::new();
        for found in self.search_versions(name).await?.into_iter().rev() {
            let Ok(version) = found.version.parse::<u64>() else {
                continue;
            };
            let mut metadata = BTreeMap::new();
            metadata.insert("source".to_string(), found.source.clone().into());
            if let Some(run_id) = &found.run_id {
                metadata.insert("run_id".to_string(), run_id.clone().into());
            }
            if let Some(status) = &found.status {
                metadata.insert("status".to_string(), status.clone().into());
            }
            versions.push(VersionInfo {
                version,
                size: 0,
                created: found
                    .creation_timestamp
                    .and_then(|ms| u64::try_from(ms).ok())
                    .and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
                aliases: found.aliases.clone(),
                format: None,
                metadata,
                error: None,
            });
        }
        Ok(ModelInfo {
            name: name.to_string(),
            versions,
            aliases,
        })
    }
}

/// Artifact sizes listed by the proxy, per directory.
#[derive(Default)]
struct Sizes(HashMap<String, HashMap<String, u64>>);

/// Whether a cached copy was downloaded from this registration of the version: MLflow reuses
/// version numbers when a model is deleted and registered again.
fn same_registration(manifest: &Manifest, found: &ModelVersion) -> bool {
    let Some(lineage) = manifest.metadata.get("mlflow") else {
        return false;
    };
    lineage.get("source").and_then(|s| s.as_str()) == Some(found.source.as_str())
        && lineage.get("creation_timestamp").and_then(|t| t.as_i64()) == found.creation_timestamp
}

fn same_tensor_names(
    logged: &ferry_runtimes::Signature,
    graph: &ferry_runtimes::Signature,
) -> bool {
    logged.inputs.len() == graph.inputs.len()
        && logged.inputs.iter().all(|t| graph.input(&t.name).is_some())
        && logged
            .outputs
            .iter()
            .all(|t| graph.output(&t.name).is_some())
}

/// Copies a local artifact, hashing it; `None` when it does not exist.
fn copy_hashing(from: &Path, to: &Path) -> Result<Option<(String, u64)>, RegistryError> {
    use std::io::{Read, Write};
    let mut input = match std::fs::File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::io(from, e)),
    };
    let size = input
        .metadata()
        .map_err(|e| RegistryError::io(from, e))?
        .len();
    let mut output = std::fs::File::create(to).map_err(|e| RegistryError::cache_write(to, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| RegistryError::io(from, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|e| RegistryError::cache_write(to, e))?;
    }
    output
        .sync_all()
        .map_err(|e| RegistryError::cache_write(to, e))?;
    Ok(Some((hex::encode(hasher.finalize()), size)))
}

/// A reqwest error with its causes (connection refused, timeout…), which its Display omits.
fn error_chain(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests;
