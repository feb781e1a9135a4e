//! Optional API keys for the inference endpoints (`…/infer`, v1 predict, business endpoints,
//! `/v1/features`). Keys come from `FERRY_API_KEYS` (comma-separated) or the config's
//! `api_keys_file` (one key per line, `#` comments); without any, inference is open.
//! Clients send `Authorization: Bearer <key>` or `x-api-key: <key>`. Health, metadata and
//! metrics stay open so probes and scrapers need no secret.

use super::error::ApiError;
use crate::config::ServerConfig;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const API_KEYS_ENV: &str = "FERRY_API_KEYS";
pub const API_KEY_HEADER: &str = "x-api-key";

/// SHA-256 digests of the accepted keys; comparing digests keeps the comparison's time
/// independent of the keys' lengths and contents. Never printed.
#[derive(Clone, Default)]
pub struct ApiKeys(Option<Arc<[[u8; 32]]>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(keys) => write!(f, "ApiKeys(<{} redacted>)", keys.len()),
            None => f.write_str("ApiKeys(disabled)"),
        }
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// Keys from text: one per line or comma-separated; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> ApiKeys {
        let keys: Vec<[u8; 32]> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| digest(k.as_bytes()))
            .collect();
        ApiKeys((!keys.is_empty()).then(|| Arc::from(keys)))
    }

    /// `FERRY_API_KEYS`, else the contents of `api_keys_file`, else disabled.
    pub fn from_config(config: &ServerConfig) -> Result<ApiKeys, crate::ServeError> {
        let text = read_secret(
            API_KEYS_ENV,
            config.api_keys_file.as_deref(),
            "api_keys_file",
        )?;
        let keys = ApiKeys::parse(text.as_deref().unwrap_or_default());
        if text.is_some() && !keys.is_enabled() {
            return Err(crate::ServeError::Config(
                "`api_keys_file` holds no key; put one key per line or remove the setting".into(),
            ));
        }
        Ok(keys)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Checks the request's key against every accepted key, without early exit.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(accepted) = &self.0 else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let Some(given) = given else {
            return Err(ApiError::Unauthorized(format!(
                "this server requires an API key: send `Authorization: Bearer <key>` or `{API_KEY_HEADER}: <key>`"
            )));
        };
        let given = digest(given.as_bytes());
        let matched = accepted
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&given));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("the API key is not valid".into()))
        }
    }
}

/// A secret from the environment variable `env` or, if unset or blank, from the file named by
/// the config key `key`; `None` when neither is set. An empty file is an error naming the key.
pub(crate) fn read_secret(
    env: &str,
    file: Option<&std::path::Path>,
    key: &str,
) -> Result<Option<String>, crate::ServeError> {
    if let Ok(value) = std::env::var(env)
        && !value.trim().is_empty()
    {
        return Ok(Some(value));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::ServeError::Config(format!("could not read `{key}` {}: {e}", path.display()))
    })?;
    if text.trim().is_empty() {
        return Err(crate::ServeError::Config(format!(
            "`{key}` {} is empty",
            path.display()
        )));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn keys_parse_from_lines_commas_and_comments() {
        let keys = ApiKeys::parse("# team keys\nalpha\n\n beta , gamma # old\n");
        assert_eq!(keys.0.as_ref().map(|k| k.len()), Some(3));
        assert!(!ApiKeys::parse("  \n# nothing\n").is_enabled());
    }

    #[test]
    fn open_without_keys_and_checked_with_them() {
        assert!(ApiKeys::default().authorize(&HeaderMap::new()).is_ok());
        let keys = ApiKeys::parse("alpha,beta");
        assert!(
            keys.authorize(&headers("authorization", "Bearer beta"))
                .is_ok()
        );
        assert!(keys.authorize(&headers("x-api-key", "alpha")).is_ok());
        for bad in [
            headers("authorization", "Bearer alph"),
            headers("authorization", "Basic alpha"),
            headers("x-api-key", "alphaalpha"),
            HeaderMap::new(),
        ] {
            let e = keys.authorize(&bad).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
    }
}
