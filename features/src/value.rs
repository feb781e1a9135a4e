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
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::Float32 => "float32",
            FeatureType::Float64 => "float64",
            FeatureType::Int32 => "int32",
            FeatureType::Int64 => "int64",
            FeatureType::Bool => "bool",
            FeatureType::String => "string",
        }
    }

    pub fn is_numeric(self) -> bool {
        self != FeatureType::String
    }
}

/// One non-null feature value. Nulls are `Option::None` everywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
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
        })
    }

    /// The value as a model input number (`None` for strings).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Float(x) => Some(*x),
            FeatureValue::Int(i) => Some(*i as f64),
            FeatureValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            FeatureValue::Str(_) => None,
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
        }
    }
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
}
