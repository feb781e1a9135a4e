use crate::{RegistryError, is_valid_name};
use std::fmt;

/// Which version of a model to serve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    Version(u64),
    Alias(String),
    /// The highest version (a bare `name`).
    Latest,
}

/// `name@version`, `name@alias` or `name` (latest version).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: String,
    pub selector: Selector,
}

impl ModelRef {
    pub fn parse(given: &str) -> Result<ModelRef, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidModelRef {
            given: given.to_string(),
            reason: reason.to_string(),
        };
        let (name, selector) = match given.split_once('@') {
            None => (given, Selector::Latest),
            Some((name, sel)) if !sel.is_empty() && sel.bytes().all(|b| b.is_ascii_digit()) => {
                match sel.parse::<u64>() {
                    Ok(v) if v > 0 => (name, Selector::Version(v)),
                    _ => return Err(invalid("a version must be a positive integer")),
                }
            }
            Some((name, alias)) => {
                if !is_valid_name(alias) {
                    return Err(invalid(
                        "the part after `@` must be a version number or an alias matching [a-z0-9][a-z0-9_-]{0,62}",
                    ));
                }
                (name, Selector::Alias(alias.to_string()))
            }
        };
        if !is_valid_name(name) {
            return Err(invalid(
                "model names match [a-z0-9][a-z0-9_-]{0,62}; write name@version or name@alias",
            ));
        }
        Ok(ModelRef {
            name: name.to_string(),
            selector,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Version(v) => write!(f, "{}@{v}", self.name),
            Selector::Alias(a) => write!(f, "{}@{a}", self.name),
            Selector::Latest => f.write_str(&self.name),
        }
    }
}

impl std::str::FromStr for ModelRef {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_aliases_and_bare_names() {
        assert_eq!(
            ModelRef::parse("fraud@7").unwrap().selector,
            Selector::Version(7)
        );
        assert_eq!(
            ModelRef::parse("churn@champion").unwrap().selector,
            Selector::Alias("champion".into())
        );
        assert_eq!(ModelRef::parse("churn").unwrap().selector, Selector::Latest);
        assert_eq!(
            ModelRef::parse("churn@champion").unwrap().to_string(),
            "churn@champion"
        );
    }

    #[test]
    fn refuses_what_could_escape_the_registry_or_is_malformed() {
        for bad in [
            "",
            "@1",
            "churn@",
            "churn@0",
            "../x@1",
            "churn@../../etc",
            "Churn@1",
            "a@b@c",
            "churn@99999999999999999999999",
        ] {
            let err = ModelRef::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
