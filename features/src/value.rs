//! Feature types and values, and their online encoding (see features/README.md).

use serde_json::Value as Json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureType {
    Float32,
    Float64,
    Int32,
    Int64,
    Bool,
    String,
    /// Raw bytes (Feast `Bytes`); only in a repo with `online_format: feast`.
    Bytes,
    /// A list of scalars (Feast `Array(...)`, written `list<int64>`); only with
    /// `online_format: feast`.
    List(Scalar),
}

/// The element type of a list feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Float32,
    Float64,
    Int32,
    Int64,
    Bool,
    String,
    Bytes,
}

impl Scalar {
    /// The scalar feature type of a list's elements.
    pub fn feature_type(self) -> FeatureType {
        match self {
            Scalar::Float32 => FeatureType::Float32,
            Scalar::Float64 => FeatureType::Float64,
            Scalar::Int32 => FeatureType::Int32,
            Scalar::Int64 => FeatureType::Int64,
            Scalar::Bool => FeatureType::Bool,
            Scalar::String => FeatureType::String,
            Scalar::Bytes => FeatureType::Bytes,
        }
    }

    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "float32" => Scalar::Float32,
            "float64" => Scalar::Float64,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "bool" => Scalar::Bool,
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            _ => return None,
        })
    }
}

impl FeatureType {
    pub fn parse(s: &str) -> Option<FeatureType> {
        Some(match s {
            "float32" => FeatureType::Float32,
            "float64" => FeatureType::Float64,
            "int32" => FeatureType::Int32,
            "int64" => FeatureType::Int64,
            "bool" => FeatureType::Bool,
            "string" => FeatureType::String,
            "bytes" => FeatureType::Bytes,
            other => {
                let inner = other.strip_prefix("list<")?.strip_suffix('>')?;
                FeatureType::List(Scalar::parse(inner.trim())?)
            }
        })
    }

    /// Types that only the Feast online format stores (ferry's own text encoding has none).
    pub fn feast_only(self) -> bool {
        matches!(self, FeatureType::Bytes | FeatureType::List(_))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::Float32 => "float32",
            FeatureType::Float64 => "float64",
            FeatureType::Int32 => "int32",
            FeatureType::Int64 => "int64",
            FeatureType::Bool => "bool",
            FeatureType::String => "string",
            FeatureType::Bytes => "bytes",
            FeatureType::List(Scalar::Float32) => "list<float32>",
            FeatureType::List(Scalar::Float64) => "list<float64>",
            FeatureType::List(Scalar::Int32) => "list<int32>",
            FeatureType::List(Scalar::Int64) => "list<int64>",
            FeatureType::List(Scalar::Bool) => "list<bool>",
            FeatureType::List(Scalar::String) => "list<string>",
            FeatureType::List(Scalar::Bytes) => "list<bytes>",
        }
    }

    /// Whether a value of this type can be a model input number.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            FeatureType::Float32
                | FeatureType::Float64
                | FeatureType::Int32
                | FeatureType::Int64
                | FeatureType::Bool
        )
    }
}

/// One non-null feature value. Nulls are `Option::None` everywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    /// A list feature's value (its elements are never null: Feast's lists cannot hold nulls).
    List(Vec<FeatureValue>),
}

impl FeatureValue {
    /// The Redis field value: floats in shortest round-trip decimal form (`float32` values are
    /// printed as f32, so they read back bit-identical), integers in decimal, booleans as
    /// `1`/`0`, strings as their UTF-8 bytes. Nulls are stored as an absent field.
    pub fn encode(&self, dtype: FeatureType) -> String {
        match self {
            FeatureValue::Float(x) if dtype == FeatureType::Float32 => format!("{}", *x as f32),
            FeatureValue::Float(x) => format!("{x}"),
            FeatureValue::Int(i) => i.to_string(),
            FeatureValue::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            FeatureValue::Str(s) => s.clone(),
            // Repo validation keeps bytes and lists out of the ferry format; JSON text keeps
            // this total rather than panicking.
            FeatureValue::Bytes(_) | FeatureValue::List(_) => self.to_json().to_string(),
        }
    }

    /// Reads a Redis field value written by `encode`.
    pub fn decode(dtype: FeatureType, raw: &str) -> Result<FeatureValue, String> {
        let bad = || format!("{raw:?} is not a valid {} value", dtype.as_str());
        Ok(match dtype {
            // float32 values are parsed as f32, so they equal the f32 that was written.
            FeatureType::Float32 => {
                FeatureValue::Float(raw.parse::<f32>().map_err(|_| bad())? as f64)
            }
            FeatureType::Float64 => FeatureValue::Float(raw.parse().map_err(|_| bad())?),
            FeatureType::Int32 | FeatureType::Int64 => {
                FeatureValue::Int(raw.parse().map_err(|_| bad())?)
            }
            FeatureType::Bool => match raw {
                "1" | "true" => FeatureValue::Bool(true),
                "0" | "false" => FeatureValue::Bool(false),
                _ => return Err(bad()),
            },
            FeatureType::String => FeatureValue::Str(raw.to_string()),
            FeatureType::Bytes | FeatureType::List(_) => {
                return Err(format!(
                    "{} values are stored only in the feast online format",
                    dtype.as_str()
                ));
            }
        })
    }

    pub fn from_yaml(dtype: FeatureType, v: &serde_yaml::Value) -> Result<FeatureValue, String> {
        let bad = || format!("{v:?} is not a valid {} value", dtype.as_str());
        Ok(match dtype {
            FeatureType::Float32 | FeatureType::Float64 => {
                FeatureValue::Float(v.as_f64().ok_or_else(bad)?)
            }
            FeatureType::Int32 | FeatureType::Int64 => {
                FeatureValue::Int(v.as_i64().ok_or_else(bad)?)
            }
            FeatureType::Bool => FeatureValue::Bool(v.as_bool().ok_or_else(bad)?),
            FeatureType::String => FeatureValue::Str(v.as_str().ok_or_else(bad)?.to_string()),
            FeatureType::Bytes => {
                FeatureValue::Bytes(v.as_str().ok_or_else(bad)?.as_bytes().to_vec())
            }
            FeatureType::List(elem) => FeatureValue::List(
                v.as_sequence()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| FeatureValue::from_yaml(elem.feature_type(), x))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// The value as a model input number (`None` for strings).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Float(x) => Some(*x),
            FeatureValue::Int(i) => Some(*i as f64),
            FeatureValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            FeatureValue::Str(_) | FeatureValue::Bytes(_) | FeatureValue::List(_) => None,
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            FeatureValue::Float(x) => serde_json::Number::from_f64(*x)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            FeatureValue::Int(i) => Json::from(*i),
            FeatureValue::Bool(b) => Json::from(*b),
            FeatureValue::Str(s) => Json::from(s.clone()),
            // Standard base64, as Feast's feature server writes bytes in JSON.
            FeatureValue::Bytes(b) => Json::from(base64(b)),
            FeatureValue::List(items) => Json::Array(items.iter().map(|x| x.to_json()).collect()),
        }
    }
}

/// Standard base64 with padding (RFC 4648), for bytes in JSON.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let cases = [
            (
                FeatureType::Float32,
                FeatureValue::Float(0.1f32 as f64),
                "0.1",
            ),
            (FeatureType::Float64, FeatureValue::Float(0.1), "0.1"),
            (
                FeatureType::Float64,
                FeatureValue::Float(-2.5e-10),
                "-0.00000000025",
            ),
            (FeatureType::Int64, FeatureValue::Int(-42), "-42"),
            (FeatureType::Bool, FeatureValue::Bool(true), "1"),
            (FeatureType::String, FeatureValue::Str("dé".into()), "dé"),
        ];
        for (t, v, text) in cases {
            assert_eq!(v.encode(t), text);
            assert_eq!(FeatureValue::decode(t, text).unwrap(), v);
        }
        assert!(FeatureValue::decode(FeatureType::Int64, "1.5").is_err());
    }

    #[test]
    fn list_and_bytes_types_parse() {
        assert_eq!(
            FeatureType::parse("list<float32>"),
            Some(FeatureType::List(Scalar::Float32))
        );
        assert_eq!(FeatureType::parse("bytes"), Some(FeatureType::Bytes));
        assert_eq!(FeatureType::parse("list<list<int64>>"), None);
        for t in ["list<int64>", "list<bytes>", "bytes", "float32"] {
            assert_eq!(FeatureType::parse(t).unwrap().as_str(), t);
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        // The RFC 4648 test vectors.
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
    }
}
