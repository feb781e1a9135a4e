//! Variant assignment. The sticky hash is part of the contract: analysts reproduce it offline
//! and batch mode calls this same code, so it must never change for existing configs.
//!
//! bucket(key) = first 8 bytes of SHA-256(`<salt>:<key>`) as a big-endian u64, mod 10000.
//! Variants, in config order, own consecutive bucket ranges proportional to their weights:
//! variant i owns `[floor(10000·W<i / W), floor(10000·W≤i / W))`, where W<i is the sum of the
//! weights before it and W the total. Moving weight between neighbours only moves the buckets
//! at the boundary; every other key keeps its variant. In Python:
//!
//! ```text
//! b = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") % 10000
//! ```
//!
//! Keys are the sticky field's value: strings as-is, integers in decimal, `true`/`false`.

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BUCKETS: u32 = 10_000;

/// Weighted variants laid out over the bucket space.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Exclusive upper bucket of each variant, in config order.
    upper: Vec<u32>,
}

impl Split {
    /// `weights` must not all be 0 (config validation guarantees it).
    pub fn new(weights: &[u32]) -> Split {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum::<u64>().max(1);
        let mut cumulative = 0u64;
        let upper = weights
            .iter()
            .map(|&w| {
                cumulative += u64::from(w);
                (cumulative * u64::from(BUCKETS) / total) as u32
            })
            .collect();
        Split { upper }
    }

    /// The variant index owning `bucket`.
    pub fn variant_of(&self, bucket: u32) -> usize {
        // Zero-weight variants own empty ranges, so the first upper bound above the bucket wins.
        self.upper
            .iter()
            .position(|&u| bucket < u)
            .unwrap_or(self.upper.len().saturating_sub(1))
    }

    /// A uniformly random variant by weight, for rows without a sticky key.
    pub fn random(&self) -> usize {
        self.variant_of(fastrand::u32(0..BUCKETS))
    }
}

/// The sticky key of a JSON value, or None when the value cannot be a key (null, float,
/// array, object): such rows are assigned at random.
pub fn sticky_key(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

pub fn bucket(salt: &str, key: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_matches_the_documented_formula() {
        // python3 -c 'import hashlib; print(int.from_bytes(hashlib.sha256(b"churn:u1").digest()[:8], "big") % 10000)'
        let d = Sha256::digest(b"churn:u1");
        let expected = u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000;
        assert_eq!(u64::from(bucket("churn", "u1")), expected);
        assert_ne!(bucket("churn", "u1"), bucket("other-salt", "u1"));
    }

    #[test]
    fn ranges_follow_weights_in_config_order() {
        let s = Split::new(&[80, 20]);
        assert_eq!(s.variant_of(0), 0);
        assert_eq!(s.variant_of(7999), 0);
        assert_eq!(s.variant_of(8000), 1);
        assert_eq!(s.variant_of(9999), 1);
        let z = Split::new(&[0, 1]);
        assert_eq!(z.variant_of(0), 1);
        let three = Split::new(&[1, 1, 1]);
        assert_eq!(three.variant_of(3332), 0);
        assert_eq!(three.variant_of(3333), 1);
        assert_eq!(three.variant_of(9999), 2);
    }

    #[test]
    fn an_80_20_split_over_5000_keys_lands_within_3_points() {
        let s = Split::new(&[80, 20]);
        let control = (0..5000)
            .filter(|i| s.variant_of(bucket("exp", &format!("user-{i}"))) == 0)
            .count();
        let share = control as f64 / 5000.0;
        assert!((0.77..=0.83).contains(&share), "control share {share}");
    }

    #[test]
    fn moving_to_50_50_keeps_keys_in_the_overlap() {
        let before = Split::new(&[80, 20]);
        let after = Split::new(&[50, 50]);
        let mut kept_control = 0;
        for i in 0..5000 {
            let b = bucket("exp", &format!("user-{i}"));
            let (v0, v1) = (before.variant_of(b), after.variant_of(b));
            // Control shrinks from [0,8000) to [0,5000): whoever is control after was control
            // before; whoever was treatment before still is.
            if v1 == 0 {
                assert_eq!(v0, 0, "key user-{i} moved into control");
                kept_control += 1;
            }
            if v0 == 1 {
                assert_eq!(v1, 1, "key user-{i} left treatment");
            }
        }
        assert!(kept_control > 2300, "{kept_control}");
    }

    #[test]
    fn sticky_keys_of_json_values() {
        assert_eq!(sticky_key(&Value::from("u1")).as_deref(), Some("u1"));
        assert_eq!(sticky_key(&Value::from(42)).as_deref(), Some("42"));
        assert_eq!(sticky_key(&Value::from(1.5)), None);
        assert_eq!(sticky_key(&Value::Null), None);
    }
}
