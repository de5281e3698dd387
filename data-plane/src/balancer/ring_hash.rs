//! Consistent hashing on a ring (Karger et al., as Envoy's RING_HASH): each
//! endpoint gets points in proportion to its weight, a request's hash picks the
//! first point at or after it. Adding or removing one endpoint moves only the
//! keys between its points and their neighbours. Every proxy builds the same
//! ring from the same endpoints, so one key goes to one endpoint mesh-wide.

/// Most points on a ring (Envoy's default maximum ring size).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// 64-bit FNV-1a, finished with SplitMix64's mixer so nearby inputs (like
/// `addr_0`, `addr_1`) spread over the whole ring.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hash ring over a cluster's endpoints.
#[derive(Debug)]
pub struct Ring {
    /// (point hash, endpoint index), sorted by hash.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring with at least `min_size` points over endpoints named by `keys`.
    pub fn new(keys: &[String], weights: &[u32], min_size: u64) -> Ring {
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        if keys.is_empty() || total == 0 {
            return Ring { points: Vec::new() };
        }
        let size = min_size.clamp(keys.len() as u64, MAX_RING_SIZE);
        let mut points = Vec::with_capacity(size as usize + keys.len());
        for (i, key) in keys.iter().enumerate() {
            let w = u64::from(weights.get(i).copied().unwrap_or(1).max(1));
            let count = (size * w).div_ceil(total);
            for n in 0..count {
                points.push((hash_bytes(format!("{key}_{n}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint for `hash`: the first eligible one at or after it.
    pub fn pick(&self, hash: u64, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        let start = self.points.partition_point(|&(h, _)| h < hash);
        (0..len)
            .map(|k| self.points[(start + k) % len].1 as usize)
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn keys_stick_and_spread_by_weight() {
        let ring = Ring::new(&keys(3), &[1, 1, 2], 1024);
        let mut counts = [0u32; 3];
        for k in 0..20_000u32 {
            let h = hash_bytes(format!("user-{k}").as_bytes());
            let first = ring.pick(h, &|_| true).unwrap();
            assert_eq!(ring.pick(h, &|_| true), Some(first), "sticky");
            counts[first] += 1;
        }
        let share = |i: usize| f64::from(counts[i]) / 20_000.0;
        assert!((share(2) - 0.5).abs() < 0.1, "{counts:?}");
        assert!((share(0) - 0.25).abs() < 0.1, "{counts:?}");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let before = Ring::new(&keys(4), &[1; 4], 1024);
        // Same points per endpoint (256), minus the removed endpoint's.
        let after = Ring::new(&keys(3), &[1; 3], 768);
        let mut moved = 0;
        for k in 0..10_000u32 {
            let h = hash_bytes(format!("k{k}").as_bytes());
            let a = before.pick(h, &|_| true).unwrap();
            let b = after.pick(h, &|_| true).unwrap();
            if a != 3 && a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the remaining endpoints stay put");
        // Ejected endpoint: its keys go to a neighbour, the rest stay.
        let h = hash_bytes(b"x");
        let owner = before.pick(h, &|_| true).unwrap();
        assert_ne!(before.pick(h, &|i| i != owner), Some(owner));
    }
}
