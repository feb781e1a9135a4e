//! The model control API: `POST /v2/repository/models/{model}/load` and `…/unload`, behind an
//! admin bearer token. Without a token configured they answer 403 saying how to enable them.

use super::AppState;
use super::error::ApiError;
use crate::config::ServerConfig;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use ferry_models::ControlError;
use ferry_registry::RegistryError;
use serde_json::{Value, json};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const ADMIN_TOKEN_ENV: &str = "FERRY_ADMIN_TOKEN";

/// The admin bearer token, if model control is enabled. Never printed.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<[u8]>>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(<redacted>)"
        } else {
            "AdminToken(disabled)"
        })
    }
}

impl AdminToken {
    pub fn new(token: Option<&str>) -> AdminToken {
        AdminToken(
            token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.as_bytes())),
        )
    }

    /// `FERRY_ADMIN_TOKEN`, else the contents of `admin_token_file`, else disabled.
    pub fn from_config(config: &ServerConfig) -> Result<AdminToken, crate::ServeError> {
        let token = crate::http::auth::read_secret(
            ADMIN_TOKEN_ENV,
            config.admin_token_file.as_deref(),
            "admin_token_file",
        )?;
        Ok(AdminToken::new(token.as_deref()))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Checks `Authorization: Bearer <token>` in constant time.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.0 else {
            return Err(ApiError::ControlDisabled);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected)) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(
                "the admin token is wrong".to_string(),
            )),
            None => Err(ApiError::Unauthorized(
                "send the admin token as `Authorization: Bearer <token>`".to_string(),
            )),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match &e {
            ControlError::NotServed { .. } => ApiError::UnknownModel(e.to_string()),
            ControlError::LoadFailed { .. } => ApiError::LoadFailed(e.to_string()),
            ControlError::Registry(r) => match r {
                RegistryError::Unavailable { .. } => ApiError::RegistryUnavailable(r.to_string()),
                RegistryError::InvalidModelRef { .. } => ApiError::BadRequest(r.to_string()),
                RegistryError::ModelNotFound { .. }
                | RegistryError::VersionNotFound { .. }
                | RegistryError::AliasNotFound { .. }
                | RegistryError::NoVersions { .. } => ApiError::UnknownModel(r.to_string()),
                _ => ApiError::LoadFailed(r.to_string()),
            },
        }
    }
}

/// Loads (or reloads) a model: a served model re-resolves its references now, retrying a
/// version that failed before; another model is added at its latest version.
pub async fn load(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.admin_token.authorize(&headers)?;
    let version = state.models.control_load(&model).await?;
    Ok(Json(
        json!({"name": model, "version": version.to_string(), "state": "READY"}),
    ))
}

/// Stops serving a model; in-flight requests finish on it first.
pub async fn unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.admin_token.authorize(&headers)?;
    let versions = state.models.control_unload(&model).await?;
    Ok(Json(json!({
        "name": model,
        "unloaded_versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "state": "UNLOADED",
    })))
}
