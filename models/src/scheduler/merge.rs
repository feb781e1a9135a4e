//! Merging requests along the batch dimension and splitting the outputs back, exactly.

use ferry_runtimes::{Tensor, TensorData};

/// Concatenates same-named, same-typed tensors along axis 0.
/// Returns `None` when datatypes or non-batch dimensions differ (the planner prevents that).
pub fn concat(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first()?;
    let inner = &first.shape[1..];
    let mut rows = 0usize;
    for t in parts {
        if t.shape.len() != first.shape.len()
            || &t.shape[1..] != inner
            || t.datatype() != first.datatype()
        {
            return None;
        }
        rows += t.shape[0];
    }
    let total: usize = parts.iter().map(|t| t.data.len()).sum();
    let mut data = TensorData::with_capacity(first.datatype(), total);
    for t in parts {
        match (&mut data, &t.data) {
            (TensorData::Bool(d), TensorData::Bool(s)) => d.extend_from_slice(s),
            (TensorData::Uint8(d), TensorData::Uint8(s)) => d.extend_from_slice(s),
            (TensorData::Uint16(d), TensorData::Uint16(s)) => d.extend_from_slice(s),
            (TensorData::Uint32(d), TensorData::Uint32(s)) => d.extend_from_slice(s),
            (TensorData::Uint64(d), TensorData::Uint64(s)) => d.extend_from_slice(s),
            (TensorData::Int8(d), TensorData::Int8(s)) => d.extend_from_slice(s),
            (TensorData::Int16(d), TensorData::Int16(s)) => d.extend_from_slice(s),
            (TensorData::Int32(d), TensorData::Int32(s)) => d.extend_from_slice(s),
            (TensorData::Int64(d), TensorData::Int64(s)) => d.extend_from_slice(s),
            (TensorData::Fp32(d), TensorData::Fp32(s)) => d.extend_from_slice(s),
            (TensorData::Fp64(d), TensorData::Fp64(s)) => d.extend_from_slice(s),
            (TensorData::Bytes(d), TensorData::Bytes(s)) => d.extend_from_slice(s),
            _ => return None,
        }
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Tensor::new(first.name.clone(), shape, data).ok()
}

/// Rows `start..start + rows` of `t` (axis 0).
pub fn slice_rows(t: &Tensor, start: usize, rows: usize) -> Tensor {
    let stride: usize = t.shape[1..].iter().product();
    let (a, b) = (start * stride, (start + rows) * stride);
    let data = match &t.data {
        TensorData::Bool(v) => TensorData::Bool(v[a..b].to_vec()),
        TensorData::Uint8(v) => TensorData::Uint8(v[a..b].to_vec()),
        TensorData::Uint16(v) => TensorData::Uint16(v[a..b].to_vec()),
        TensorData::Uint32(v) => TensorData::Uint32(v[a..b].to_vec()),
        TensorData::Uint64(v) => TensorData::Uint64(v[a..b].to_vec()),
        TensorData::Int8(v) => TensorData::Int8(v[a..b].to_vec()),
        TensorData::Int16(v) => TensorData::Int16(v[a..b].to_vec()),
        TensorData::Int32(v) => TensorData::Int32(v[a..b].to_vec()),
        TensorData::Int64(v) => TensorData::Int64(v[a..b].to_vec()),
        TensorData::Fp32(v) => TensorData::Fp32(v[a..b].to_vec()),
        TensorData::Fp64(v) => TensorData::Fp64(v[a..b].to_vec()),
        TensorData::Bytes(v) => TensorData::Bytes(v[a..b].to_vec()),
    };
    let mut shape = t.shape.clone();
    shape[0] = rows;
    Tensor {
        name: t.name.clone(),
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_slice_gives_back_each_part() {
        let a = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![1., 2.])).unwrap();
        let b = Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![3., 4., 5., 6.])).unwrap();
        let merged = concat(&[&a, &b]).unwrap();
        assert_eq!(merged.shape, vec![3, 2]);
        assert_eq!(slice_rows(&merged, 0, 1), a);
        assert_eq!(slice_rows(&merged, 1, 2), b);
    }

    #[test]
    fn concat_refuses_mismatched_parts() {
        let a = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![1., 2.])).unwrap();
        let b = Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![1., 2., 3.])).unwrap();
        let c = Tensor::new("x", vec![1, 2], TensorData::Fp64(vec![1., 2.])).unwrap();
        assert!(concat(&[&a, &b]).is_none());
        assert!(concat(&[&a, &c]).is_none());
    }
}
