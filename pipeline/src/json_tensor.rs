//! JSON tensor data (flat or nested row-major arrays of numbers, booleans or strings) decoded
//! straight into a typed buffer. Shared by the OIP v2 JSON codec and the row codec in `rows`,
//! so both report a wrong element the same way.

use ferry_runtimes::{DataType, TensorData};

/// Most elements reserved up front for a JSON tensor before its data is seen.
const MAX_PREALLOCATED_ELEMENTS: usize = 4096;

/// Decodes a JSON tensor body (flat or nested row-major) straight into a typed buffer, without
/// building an intermediate JSON tree; stops at the first element past `count`. `null` is
/// refused (OIP v2 tensors are numbers).
pub fn decode_json<'de, D: serde::Deserializer<'de>>(
    datatype: DataType,
    data: D,
    count: usize,
) -> Result<TensorData, String> {
    decode(datatype, data, count, false)
}

/// [`decode_json`] for rows (`instances`, endpoint rows, batch rows), where `null` is a
/// missing value: in a FP32/FP64 input it becomes NaN, which tree models route by each split's
/// default direction (JSON has no NaN; pandas' `to_json` and ferry's batch reader write null).
/// Other types still refuse it.
pub fn decode_json_missing_as_nan<'de, D: serde::Deserializer<'de>>(
    datatype: DataType,
    data: D,
    count: usize,
) -> Result<TensorData, String> {
    decode(datatype, data, count, true)
}

fn decode<'de, D: serde::Deserializer<'de>>(
    datatype: DataType,
    data: D,
    count: usize,
    null_is_nan: bool,
) -> Result<TensorData, String> {
    let mut sink = Sink {
        out: TensorData::with_capacity(datatype, count.min(MAX_PREALLOCATED_ELEMENTS)),
        datatype,
        count,
        index: 0,
        null_is_nan,
        error: None,
    };
    let outcome = data.deserialize_any(Element(&mut sink));
    if let Some(e) = sink.error {
        return Err(e);
    }
    outcome.map_err(|e| format!("`data` is not a valid tensor: {e}"))?;
    if sink.index != count {
        return Err(format!(
            "`data` has {} elements but the shape needs {count}",
            sink.index
        ));
    }
    Ok(sink.out)
}

enum Leaf<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Null,
    Other(&'static str),
}

impl std::fmt::Display for Leaf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leaf::Bool(b) => write!(f, "{b}"),
            Leaf::I64(n) => write!(f, "{n}"),
            Leaf::U64(n) => write!(f, "{n}"),
            Leaf::F64(x) => write!(f, "{x}"),
            Leaf::Str(s) if s.len() > 40 => write!(f, "a string of {} bytes", s.len()),
            Leaf::Str(s) => write!(f, "{s:?}"),
            Leaf::Null => f.write_str("null"),
            Leaf::Other(what) => f.write_str(what),
        }
    }
}

struct Sink {
    out: TensorData,
    datatype: DataType,
    count: usize,
    index: usize,
    /// `null` reads as NaN in floating-point data.
    null_is_nan: bool,
    /// The first problem, in ferry's words (serde's own message would add noise).
    error: Option<String>,
}

impl Sink {
    fn push(&mut self, leaf: Leaf<'_>) -> Result<(), String> {
        let (index, datatype) = (self.index, self.datatype);
        if index >= self.count {
            return Err(format!(
                "`data` has more than the {} elements the shape describes",
                self.count
            ));
        }
        let wrong = || format!("`data[{index}]` is {leaf}, which is not a {datatype} value");
        macro_rules! int {
            ($vec:ident, $t:ty) => {{
                let n = match leaf {
                    Leaf::I64(n) => <$t>::try_from(n).ok(),
                    Leaf::U64(n) => <$t>::try_from(n).ok(),
                    _ => None,
                };
                $vec.push(n.ok_or_else(wrong)?)
            }};
        }
        let null_is_nan = self.null_is_nan;
        let float = || match leaf {
            Leaf::I64(n) => Some(n as f64),
            Leaf::U64(n) => Some(n as f64),
            Leaf::F64(x) => Some(x),
            Leaf::Null if null_is_nan => Some(f64::NAN),
            _ => None,
        };
        match &mut self.out {
            TensorData::Bool(vec) => match leaf {
                Leaf::Bool(b) => vec.push(b),
                _ => return Err(wrong()),
            },
            TensorData::Uint8(vec) => int!(vec, u8),
            TensorData::Uint16(vec) => int!(vec, u16),
            TensorData::Uint32(vec) => int!(vec, u32),
            TensorData::Uint64(vec) => int!(vec, u64),
            TensorData::Int8(vec) => int!(vec, i8),
            TensorData::Int16(vec) => int!(vec, i16),
            TensorData::Int32(vec) => int!(vec, i32),
            TensorData::Int64(vec) => int!(vec, i64),
            TensorData::Fp32(vec) => {
                let x = float().ok_or_else(wrong)? as f32;
                if x.is_infinite() {
                    return Err(format!(
                        "`data[{index}]` is {leaf}, which is out of range for FP32"
                    ));
                }
                vec.push(x)
            }
            TensorData::Fp64(vec) => vec.push(float().ok_or_else(wrong)?),
            TensorData::Bytes(vec) => match leaf {
                Leaf::Str(s) => vec.push(s.as_bytes().to_vec()),
                _ => return Err(wrong()),
            },
        }
        self.index += 1;
        Ok(())
    }
}

/// One JSON value inside `data`: an array (recursed into) or a leaf.
struct Element<'s>(&'s mut Sink);

impl Element<'_> {
    fn leaf<E: serde::de::Error>(self, leaf: Leaf<'_>) -> Result<(), E> {
        self.0.push(leaf).map_err(|message| {
            self.0.error = Some(message);
            E::custom("invalid tensor element")
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Element<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Element<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor elements, flat or in nested arrays")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(Leaf::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Leaf::I64(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(Leaf::U64(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(Leaf::F64(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Leaf::Str(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.leaf(Leaf::Null)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.leaf(Leaf::Other("an object"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Element(&mut *self.0))?.is_some() {}
        Ok(())
    }
}
