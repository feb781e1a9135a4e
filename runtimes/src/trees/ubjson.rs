//! A small Universal Binary JSON (UBJSON, Draft 12) reader for XGBoost's `.ubj` models: it
//! turns the document into a `serde_json::Value`, so one reader serves both XGBoost formats.
//! Big-endian numbers; containers may be typed (`$`) and counted (`#`).

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused rather than recursed into (XGBoost models nest ~6).
const MAX_DEPTH: usize = 64;

pub(crate) fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = Reader { bytes, pos: 0 };
    let marker = reader.marker()?;
    let value = reader.value(marker, 0)?;
    if reader.pos != bytes.len() {
        return Err(format!(
            "{} bytes left over after the document at offset {}",
            bytes.len() - reader.pos,
            reader.pos
        ));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("the file ends inside a value at offset {}", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self
            .take(N)?
            .try_into()
            .expect("take returns N bytes. This is a bug."))
    }

    /// The next type marker, skipping no-op (`N`) markers.
    fn marker(&mut self) -> Result<u8, String> {
        loop {
            let m = self.array::<1>()?[0];
            if m != b'N' {
                return Ok(m);
            }
        }
    }

    fn int(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => i64::from(i8::from_be_bytes(self.array()?)),
            b'U' => i64::from(self.array::<1>()?[0]),
            b'I' => i64::from(i16::from_be_bytes(self.array()?)),
            b'l' => i64::from(i32::from_be_bytes(self.array()?)),
            b'L' => i64::from_be_bytes(self.array()?),
            other => {
                return Err(format!(
                    "expected an integer type marker at offset {}, found {:?}",
                    self.pos - 1,
                    char::from(other)
                ));
            }
        })
    }

    fn length(&mut self) -> Result<usize, String> {
        let marker = self.marker()?;
        let n = self.int(marker)?;
        let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
        // Every element takes at least one byte, which bounds allocations by the file size.
        if n > self.bytes.len() - self.pos {
            return Err(format!(
                "length {n} at offset {} is longer than the rest of the file",
                self.pos
            ));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("string at offset {at} is not UTF-8"))
    }

    fn value(&mut self, marker: u8, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        Ok(match marker {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int(marker)?),
            b'd' => float(f64::from(f32::from_be_bytes(self.array()?)))?,
            b'D' => float(f64::from_be_bytes(self.array()?))?,
            b'C' => Value::String(char::from(self.array::<1>()?[0]).to_string()),
            b'S' => Value::String(self.string()?),
            b'H' => {
                let s = self.string()?;
                Value::Number(
                    s.parse::<Number>()
                        .map_err(|_| format!("bad high-precision number {s:?}"))?,
                )
            }
            b'[' => {
                let (kind, count) = self.container_header()?;
                let mut items = Vec::with_capacity(count.unwrap_or(0));
                match count {
                    Some(n) => {
                        for _ in 0..n {
                            let m = match kind {
                                Some(k) => k,
                                None => self.marker()?,
                            };
                            items.push(self.value(m, depth + 1)?);
                        }
                    }
                    None => loop {
                        let m = self.marker()?;
                        if m == b']' {
                            break;
                        }
                        items.push(self.value(m, depth + 1)?);
                    },
                }
                Value::Array(items)
            }
            b'{' => {
                let (kind, count) = self.container_header()?;
                let mut map = Map::new();
                let mut i = 0usize;
                loop {
                    match count {
                        Some(n) if i == n => break,
                        Some(_) => {}
                        None => {
                            // An unsized object ends with `}` where the next key's length
                            // marker would be.
                            if self.bytes.get(self.pos) == Some(&b'}') {
                                self.pos += 1;
                                break;
                            }
                        }
                    }
                    let key = self.string()?;
                    let m = match kind {
                        Some(k) => k,
                        None => self.marker()?,
                    };
                    map.insert(key, self.value(m, depth + 1)?);
                    i += 1;
                }
                Value::Object(map)
            }
            other => {
                return Err(format!(
                    "unknown type marker {:?} at offset {}",
                    char::from(other),
                    self.pos - 1
                ));
            }
        })
    }

    /// Optional `$type` and `#count` after `[` or `{`; a type needs a count.
    fn container_header(&mut self) -> Result<(Option<u8>, Option<usize>), String> {
        let mut kind = None;
        if self.bytes.get(self.pos) == Some(&b'$') {
            self.pos += 1;
            kind = Some(self.array::<1>()?[0]);
        }
        if self.bytes.get(self.pos) == Some(&b'#') {
            self.pos += 1;
            return Ok((kind, Some(self.length()?)));
        }
        if kind.is_some() {
            return Err(format!(
                "typed container without a count at offset {}",
                self.pos
            ));
        }
        Ok((None, None))
    }
}

fn float(x: f64) -> Result<Value, String> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("non-finite number {x} where a finite one is needed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_typed_counted_and_open_containers() {
        let mut doc = b"{L\x00\x00\x00\x00\x00\x00\x00\x01a[$d#U\x02".to_vec();
        doc.extend(1.5f32.to_be_bytes());
        doc.extend((-2.0f32).to_be_bytes());
        doc.extend(b"U\x01bSU\x02hi");
        doc.extend(b"U\x01c[i\xffU\xffT]}");
        let v = parse(&doc).unwrap();
        assert_eq!(v["a"], serde_json::json!([1.5, -2.0]));
        assert_eq!(v["b"], "hi");
        assert_eq!(v["c"], serde_json::json!([-1, 255, true]));
    }

    #[test]
    fn refuses_truncated_and_hostile_input() {
        for bad in [
            &b"{"[..],
            b"[#L\x7f\xff\xff\xff\xff\xff\xff\xff",
            b"[$d]",
            b"Q",
            b"SU\x05ab",
            b"Zx",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = vec![b'['; 1000];
        assert!(parse(&deep).unwrap_err().contains("nesting"));
    }
}
