//! Endpoint selection: least request (power of two choices), weighted round
//! robin, and consistent hashing on a ring.
//!
//! A balancer is built once per cluster update from the endpoints' weights and
//! is immutable afterwards; picking reads it plus a few atomics (a round-robin
//! cursor, endpoints' load), so no lock is taken on the request path. The caller
//! says which endpoints may be picked (`eligible`: not ejected, not tried yet)
//! and what an endpoint costs (least request only).

mod least_request;
mod ring_hash;
mod round_robin;

pub use ring_hash::{Ring, hash_bytes};
pub use round_robin::WeightedRoundRobin;

use crate::decode_policy::LbKind;

/// Endpoint weights, for weighted random sampling.
#[derive(Debug)]
pub struct Weights {
    /// Running sums of the weights; empty when all weights are equal, where a
    /// uniform index is the same thing and cheaper.
    cumulative: Vec<u32>,
    len: usize,
}

impl Weights {
    /// The weights of endpoints `0..weights.len()`.
    pub fn new(weights: &[u32]) -> Weights {
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cumulative = if uniform {
            Vec::new()
        } else {
            weights
                .iter()
                .scan(0u32, |sum, w| {
                    *sum = sum.saturating_add((*w).max(1));
                    Some(*sum)
                })
                .collect()
        };
        Weights {
            cumulative,
            len: weights.len(),
        }
    }

    /// Whether every endpoint has the same weight.
    pub fn uniform(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// A random endpoint, each with probability weight / total.
    pub fn sample(&self) -> usize {
        match self.cumulative.last() {
            None => fastrand::usize(..self.len),
            Some(&total) => {
                let r = fastrand::u32(..total);
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }

    /// Endpoint `i`'s weight relative to the others (1.0 when uniform).
    pub fn weight(&self, i: usize) -> f64 {
        match i {
            _ if self.cumulative.is_empty() => 1.0,
            0 => f64::from(self.cumulative[0]),
            _ => f64::from(self.cumulative[i] - self.cumulative[i - 1]),
        }
    }
}

/// A cluster's balancer.
#[derive(Debug)]
pub enum Balancer {
    /// Power of two choices over peak-EWMA × in-flight (the default).
    LeastRequest(Weights),
    /// Smooth weighted round robin.
    RoundRobin(WeightedRoundRobin),
    /// Consistent hashing; requests without a hash key pick at random.
    RingHash(Ring, Weights),
}

impl Balancer {
    /// A balancer of `kind` over endpoints with `weights` (and `keys`, their
    /// addresses, which place them on a ring so every proxy builds the same one).
    pub fn new(kind: LbKind, weights: &[u32], keys: &[String]) -> Balancer {
        match kind {
            LbKind::LeastRequest => Balancer::LeastRequest(Weights::new(weights)),
            // An original-destination cluster has no endpoint list to pick from.
            LbKind::RoundRobin | LbKind::ClusterProvided => {
                Balancer::RoundRobin(WeightedRoundRobin::new(weights))
            }
            LbKind::RingHash { min_ring_size } => Balancer::RingHash(
                Ring::new(keys, weights, min_ring_size),
                Weights::new(weights),
            ),
        }
    }

    /// Picks an endpoint among `n` for which `eligible` holds; `hash` is the
    /// request's hash key (ring hash), `cost` an endpoint's load (least request).
    /// `None` when no endpoint is eligible.
    pub fn pick(
        &self,
        n: usize,
        hash: Option<u64>,
        eligible: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Balancer::LeastRequest(w) => least_request::pick(w, n, &eligible, &cost),
            Balancer::RoundRobin(rr) => rr.pick(&eligible),
            Balancer::RingHash(ring, w) => match hash {
                Some(h) => ring.pick(h, &eligible),
                None => sample_eligible(w, n, &eligible),
            },
        }
    }
}

/// A weighted random eligible endpoint: a few samples, then a scan from a random
/// start (so an almost fully ejected cluster still answers in O(n)).
pub(crate) fn sample_eligible(
    w: &Weights,
    n: usize,
    eligible: &impl Fn(usize) -> bool,
) -> Option<usize> {
    for _ in 0..4 {
        let i = w.sample();
        if eligible(i) {
            return Some(i);
        }
    }
    let start = fastrand::usize(..n);
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sampling_follows_weights() {
        let w = Weights::new(&[1, 3]);
        assert!(!w.uniform());
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[w.sample()] += 1;
        }
        let share = f64::from(counts[1]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
        assert_eq!(w.weight(1), 3.0);
        assert!(Weights::new(&[2, 2, 2]).uniform());
    }

    #[test]
    fn ineligible_endpoints_are_never_picked() {
        for kind in [
            LbKind::LeastRequest,
            LbKind::RoundRobin,
            LbKind::RingHash { min_ring_size: 64 },
        ] {
            let keys: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:80")).collect();
            let b = Balancer::new(kind, &[1, 1, 1, 1], &keys);
            for h in 0..200u64 {
                let hash = Some(hash_bytes(&h.to_le_bytes()));
                let i = b.pick(4, hash, |i| i != 2, |_| 1.0).unwrap();
                assert_ne!(i, 2, "{kind:?}");
            }
            assert_eq!(b.pick(4, None, |_| false, |_| 1.0), None, "{kind:?}");
            assert_eq!(b.pick(0, None, |_| true, |_| 1.0), None, "{kind:?}");
        }
    }
}
