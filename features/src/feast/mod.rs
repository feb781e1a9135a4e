//! Feast's Redis online-store layout (`online_format: feast`), so ferry reads what `feast
//! materialize` wrote and Feast reads what `ferry features materialize` wrote:
//!
//! - hash key: the entity key serialized as Feast's `entity_key_serialization_version: 3`,
//!   followed by the project name's UTF-8 bytes;
//! - fields: the 4-byte little-endian murmur3_32 (seed 0) of `"<view>:<feature>"`, one per
//!   feature, holding a serialized `feast.types.Value`; and `_ts:<view>` holding a serialized
//!   `google.protobuf.Timestamp` (the row's event time).
//!
//! Written from Feast's `feast/infra/key_encoding_utils.py` and
//! `feast/infra/online_stores/{redis,helpers}.py` (feast 0.67.0); the unit tests hold bytes that
//! those functions produced.

use crate::value::{FeatureType, FeatureValue, Scalar};

/// The Feast messages, generated from the vendored `features/proto/feast/types/*.proto` by
/// `scripts/gen-grpc.sh` (committed, so building needs no protoc).
#[allow(clippy::all, clippy::pedantic, rustdoc::all, missing_docs)]
pub mod proto {
    include!("generated/feast.types.rs");
}

use prost::Message;
use proto::value::Val;
use proto::value_type::Enum as ValueType;

/// The only entity key serialization Feast still writes (older versions are refused at load).
pub const ENTITY_KEY_SERIALIZATION_VERSION: u32 = 3;

/// MurmurHash3's 32-bit variant (x86_32), as the `mmh3` package Feast uses computes it.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash field of one feature: murmur3_32 of `"<view>:<feature>"`, little-endian.
pub fn feature_field(view: &str, feature: &str) -> [u8; 4] {
    murmur3_32(format!("{view}:{feature}").as_bytes(), 0).to_le_bytes()
}

/// The hash field holding a view's event time.
pub fn ts_field(view: &str) -> String {
    format!("_ts:{view}")
}

/// One join key's value in an entity key, typed as the entity's `dtype` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Str(String),
    Int64(i64),
    Int32(i32),
}

impl KeyValue {
    /// Parses the text form of a key (how requests and offline rows hand keys to the store)
    /// as the entity's dtype (`string`, `int64` or `int32`).
    pub fn parse(dtype: &str, text: &str) -> Result<KeyValue, String> {
        match dtype {
            "int64" => text
                .parse()
                .map(KeyValue::Int64)
                .map_err(|_| format!("{text:?} is not an int64 key")),
            "int32" => text
                .parse()
                .map(KeyValue::Int32)
                .map_err(|_| format!("{text:?} is not an int32 key")),
            _ => Ok(KeyValue::Str(text.to_string())),
        }
    }

    /// Feast's `_serialize_val` for version 3: the value type and the value's bytes.
    fn serialized(&self) -> (ValueType, Vec<u8>) {
        match self {
            KeyValue::Str(s) => (ValueType::String, s.as_bytes().to_vec()),
            KeyValue::Int64(i) => (ValueType::Int64, i.to_le_bytes().to_vec()),
            KeyValue::Int32(i) => (ValueType::Int32, i.to_le_bytes().to_vec()),
        }
    }
}

/// Feast's `serialize_entity_key` (version 3): the number of keys (u32 LE); for each join key
/// sorted by name: `STRING` (u32 LE), its length (u32 LE) and UTF-8 bytes; then for each value
/// in the same order: its value type (u32 LE), length (u32 LE) and bytes (integers
/// little-endian, strings UTF-8).
pub fn serialize_entity_key(keys: &[(&str, &KeyValue)]) -> Vec<u8> {
    let mut sorted: Vec<&(&str, &KeyValue)> = keys.iter().collect();
    // Python sorts the join key names as strings: code point order, the same as UTF-8 bytes.
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(4 + sorted.len() * 32);
    out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
    for (name, _) in &sorted {
        out.extend_from_slice(&(ValueType::String as i32 as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    for (_, value) in &sorted {
        let (kind, bytes) = value.serialized();
        out.extend_from_slice(&(kind as i32 as u32).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The Redis key of one entity: the serialized entity key followed by the project name.
pub fn redis_key(project: &str, keys: &[(&str, &KeyValue)]) -> Vec<u8> {
    let mut key = serialize_entity_key(keys);
    key.extend_from_slice(project.as_bytes());
    key
}

/// A `feast.types.Value` for a feature value of `dtype` (`None` = null: Feast writes an empty
/// `Value`, whose serialization is zero bytes).
pub fn encode_value(value: Option<&FeatureValue>, dtype: FeatureType) -> Vec<u8> {
    let val = value.and_then(|v| to_val(v, dtype));
    proto::Value { val }.encode_to_vec()
}

fn to_val(v: &FeatureValue, dtype: FeatureType) -> Option<Val> {
    Some(match (dtype, v) {
        (FeatureType::Float32, FeatureValue::Float(x)) => Val::FloatVal(*x as f32),
        (FeatureType::Float32, FeatureValue::Int(i)) => Val::FloatVal(*i as f32),
        (FeatureType::Float64, FeatureValue::Float(x)) => Val::DoubleVal(*x),
        (FeatureType::Float64, FeatureValue::Int(i)) => Val::DoubleVal(*i as f64),
        (FeatureType::Int32, FeatureValue::Int(i)) => Val::Int32Val(i32::try_from(*i).ok()?),
        (FeatureType::Int64, FeatureValue::Int(i)) => Val::Int64Val(*i),
        (FeatureType::Bool, FeatureValue::Bool(b)) => Val::BoolVal(*b),
        (FeatureType::String, FeatureValue::Str(s)) => Val::StringVal(s.clone()),
        (FeatureType::Bytes, FeatureValue::Bytes(b)) => Val::BytesVal(b.clone()),
        (FeatureType::Bytes, FeatureValue::Str(s)) => Val::BytesVal(s.as_bytes().to_vec()),
        (FeatureType::List(elem), FeatureValue::List(items)) => list_val(elem, items)?,
        _ => return None,
    })
}

fn list_val(elem: Scalar, items: &[FeatureValue]) -> Option<Val> {
    macro_rules! collect {
        ($pat:pat => $e:expr) => {
            items
                .iter()
                .map(|x| match x {
                    $pat => Some($e),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?
        };
    }
    Some(match elem {
        Scalar::Float32 => Val::FloatListVal(proto::FloatList {
            val: collect!(FeatureValue::Float(x) => *x as f32),
        }),
        Scalar::Float64 => Val::DoubleListVal(proto::DoubleList {
            val: collect!(FeatureValue::Float(x) => *x),
        }),
        Scalar::Int32 => Val::Int32ListVal(proto::Int32List {
            val: collect!(FeatureValue::Int(i) => i32::try_from(*i).ok()?),
        }),
        Scalar::Int64 => Val::Int64ListVal(proto::Int64List {
            val: collect!(FeatureValue::Int(i) => *i),
        }),
        Scalar::Bool => Val::BoolListVal(proto::BoolList {
            val: collect!(FeatureValue::Bool(b) => *b),
        }),
        Scalar::String => Val::StringListVal(proto::StringList {
            val: collect!(FeatureValue::Str(s) => s.clone()),
        }),
        Scalar::Bytes => Val::BytesListVal(proto::BytesList {
            val: collect!(FeatureValue::Bytes(b) => b.clone()),
        }),
    })
}

/// Reads a stored `feast.types.Value`: `Ok(None)` for an empty value (how Feast stores a null),
/// the value as its own oneof says otherwise (Feast returns what is stored whatever the view's
/// declared type, so ferry does too), an error for bytes that are not a `Value` or a kind
/// ferry does not serve (maps, sets, timestamps…).
pub fn decode_value(raw: &[u8]) -> Result<Option<FeatureValue>, String> {
    let value = proto::Value::decode(raw).map_err(|e| format!("not a feast.types.Value: {e}"))?;
    let Some(val) = value.val else {
        return Ok(None);
    };
    let floats = |v: Vec<f32>| {
        FeatureValue::List(
            v.into_iter()
                .map(|x| FeatureValue::Float(x.into()))
                .collect(),
        )
    };
    Ok(Some(match val {
        Val::FloatVal(x) => FeatureValue::Float(x.into()),
        Val::DoubleVal(x) => FeatureValue::Float(x),
        Val::Int32Val(i) => FeatureValue::Int(i.into()),
        Val::Int64Val(i) => FeatureValue::Int(i),
        Val::BoolVal(b) => FeatureValue::Bool(b),
        Val::StringVal(s) => FeatureValue::Str(s),
        Val::BytesVal(b) => FeatureValue::Bytes(b),
        Val::NullVal(_) => return Ok(None),
        Val::FloatListVal(l) => floats(l.val),
        Val::DoubleListVal(l) => {
            FeatureValue::List(l.val.into_iter().map(FeatureValue::Float).collect())
        }
        Val::Int32ListVal(l) => FeatureValue::List(
            l.val
                .into_iter()
                .map(|i| FeatureValue::Int(i.into()))
                .collect(),
        ),
        Val::Int64ListVal(l) => {
            FeatureValue::List(l.val.into_iter().map(FeatureValue::Int).collect())
        }
        Val::BoolListVal(l) => {
            FeatureValue::List(l.val.into_iter().map(FeatureValue::Bool).collect())
        }
        Val::StringListVal(l) => {
            FeatureValue::List(l.val.into_iter().map(FeatureValue::Str).collect())
        }
        Val::BytesListVal(l) => {
            FeatureValue::List(l.val.into_iter().map(FeatureValue::Bytes).collect())
        }
        other => {
            return Err(format!(
                "holds a Feast value kind ferry does not serve ({})",
                kind_name(&other)
            ));
        }
    }))
}

fn kind_name(v: &Val) -> String {
    let debug = format!("{v:?}");
    debug.split('(').next().unwrap_or("unknown").to_string()
}

/// `google.protobuf.Timestamp` (well-known type; Feast stores the event time in one).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The `_ts:<view>` value for an event time in Unix milliseconds.
pub fn encode_timestamp(ts_ms: i64) -> Vec<u8> {
    Timestamp {
        seconds: ts_ms.div_euclid(1000),
        nanos: (ts_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
    .encode_to_vec()
}

/// Reads a `_ts:<view>` value as Unix milliseconds (sub-millisecond digits are dropped).
pub fn decode_timestamp(raw: &[u8]) -> Result<i64, String> {
    let t = Timestamp::decode(raw).map_err(|e| format!("not a protobuf Timestamp: {e}"))?;
    Ok(t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(1_000_000))))
}

/// Reads a `_ts:<view>` value as nanoseconds since the epoch (how Feast compares them).
pub fn decode_timestamp_nanos(raw: &[u8]) -> Result<i128, String> {
    let t = Timestamp::decode(raw).map_err(|e| format!("not a protobuf Timestamp: {e}"))?;
    Ok(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

#[cfg(test)]
mod tests {
    //! The expected bytes were printed by feast 0.67.0's own functions, e.g.
    //! `feast.infra.online_stores.helpers._redis_key("shop", EntityKey(join_keys=["user_id"],
    //! entity_values=[Value(string_val="u1")])).hex()`, `_mmh3("user_stats:visits_7d").hex()`
    //! and `Value(float_val=0.1).SerializeToString().hex()`.
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn redis_keys_match_feast() {
        let u1 = KeyValue::Str("u1".into());
        assert_eq!(
            hex(&redis_key("shop", &[("user_id", &u1)])),
            "010000000200000007000000757365725f69640200000002000000753173686f70"
        );
        let d = KeyValue::Int64(1001);
        assert_eq!(
            hex(&redis_key("shop", &[("driver_id", &d)])),
            "0100000002000000090000006472697665725f69640400000008000000e90300000000000073686f70"
        );
        // Compound key: Feast sorts the join keys by name (merchant_id before user_id).
        let m = KeyValue::Int64(-7);
        assert_eq!(
            hex(&redis_key("shop", &[("user_id", &u1), ("merchant_id", &m)])),
            "02000000020000000b0000006d65726368616e745f69640200000007000000757365725f69640400000008000000f9ffffffffffffff0200000002000000753173686f70"
        );
        let k = KeyValue::Int32(5);
        assert_eq!(
            hex(&redis_key("p", &[("k", &k)])),
            "0100000002000000010000006b03000000040000000500000070"
        );
    }

    #[test]
    fn murmur_fields_match_feast() {
        for (text, want) in [
            ("user_stats:visits_7d", "f76a0407"),
            ("driver_hourly_stats:conv_rate", "6160e3da"),
            ("", "00000000"),
            ("a", "b269253c"),
            ("é:ü", "88c59959"),
        ] {
            assert_eq!(
                hex(&murmur3_32(text.as_bytes(), 0).to_le_bytes()),
                want,
                "{text}"
            );
        }
        assert_eq!(hex(&feature_field("user_stats", "visits_7d")), "f76a0407");
    }

    #[test]
    fn values_match_feast() {
        use FeatureValue as V;
        let l = |v: Vec<V>| V::List(v);
        let cases: Vec<(FeatureType, Option<V>, &str)> = vec![
            (FeatureType::Float32, Some(V::Float(0.1)), "35cdcccc3d"),
            (
                FeatureType::Float64,
                Some(V::Float(-2.5)),
                "2900000000000004c0",
            ),
            (
                FeatureType::Int64,
                Some(V::Int(-42)),
                "20d6ffffffffffffffff01",
            ),
            (FeatureType::Int32, Some(V::Int(7)), "1807"),
            (FeatureType::Bool, Some(V::Bool(true)), "3801"),
            (FeatureType::Bool, Some(V::Bool(false)), "3800"),
            (FeatureType::String, Some(V::Str("dé".into())), "120364c3a9"),
            (FeatureType::Bytes, Some(V::Bytes(vec![0, 255])), "0a0200ff"),
            (
                FeatureType::List(Scalar::Float32),
                Some(l(vec![V::Float(1.5), V::Float(-2.0)])),
                "82010a0a080000c03f000000c0",
            ),
            (
                FeatureType::List(Scalar::String),
                Some(l(vec![V::Str("a".into()), V::Str(String::new())])),
                "62050a01610a00",
            ),
            (
                FeatureType::List(Scalar::Int64),
                Some(l(vec![V::Int(1), V::Int(-1)])),
                "720d0a0b01ffffffffffffffffff01",
            ),
            (
                FeatureType::List(Scalar::Bytes),
                Some(l(vec![V::Bytes(b"x".to_vec())])),
                "5a030a0178",
            ),
            (FeatureType::Int64, Some(V::Int(0)), "2000"),
            (FeatureType::Int64, None, ""),
        ];
        for (dtype, value, want) in cases {
            let bytes = encode_value(value.as_ref(), dtype);
            assert_eq!(hex(&bytes), want, "{dtype:?} {value:?}");
            let back = decode_value(&bytes).unwrap();
            // float32 values come back as the f32 that was stored.
            let expected = match &value {
                Some(V::Float(x)) if dtype == FeatureType::Float32 => {
                    Some(V::Float(f64::from(*x as f32)))
                }
                Some(V::List(items)) if dtype == FeatureType::List(Scalar::Float32) => {
                    Some(V::List(
                        items
                            .iter()
                            .map(|x| match x {
                                V::Float(f) => V::Float(f64::from(*f as f32)),
                                other => other.clone(),
                            })
                            .collect(),
                    ))
                }
                other => other.clone(),
            };
            assert_eq!(back, expected, "{dtype:?}");
        }
        assert!(decode_value(b"\xff\xff").is_err());
    }

    #[test]
    fn timestamps_match_feast() {
        // Timestamp(seconds=1700000000, nanos=123000000).SerializeToString()
        assert_eq!(
            hex(&encode_timestamp(1_700_000_000_123)),
            "0880e2cfaa0610c0a9d33a"
        );
        assert_eq!(
            decode_timestamp(&encode_timestamp(1_700_000_000_123)).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(decode_timestamp(&encode_timestamp(-1)).unwrap(), -1);
    }

    #[test]
    fn key_values_parse_by_dtype() {
        assert_eq!(KeyValue::parse("int64", "-3").unwrap(), KeyValue::Int64(-3));
        assert_eq!(
            KeyValue::parse("string", "7").unwrap(),
            KeyValue::Str("7".into())
        );
        assert!(KeyValue::parse("int32", "x").is_err());
    }
}
