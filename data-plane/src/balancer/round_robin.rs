//! Weighted round robin without a lock: the schedule (smooth weighted round
//! robin, as nginx orders it, so a 3:1 split is a,a,b,a rather than a,a,a,b) is
//! computed once per cluster update; picking is an atomic increment and an index.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A precomputed weighted schedule and a cursor over it.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedRoundRobin {
    /// A schedule for endpoints with `weights`, starting at a random position so
    /// that sidecars restarted together do not all hit the same endpoint first.
    pub fn new(weights: &[u32]) -> WeightedRoundRobin {
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w.max(1))).max(1);
        let weights: Vec<i64> = weights
            .iter()
            .map(|&w| i64::from(w.max(1) / divisor))
            .collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
                .expect("total > 0 means endpoints");
            current[best] -= total;
            schedule.push(best as u32);
        }
        WeightedRoundRobin {
            next: AtomicUsize::new(fastrand::usize(..schedule.len().max(1))),
            schedule,
        }
    }

    /// The next eligible endpoint in the schedule.
    pub fn pick(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(start + k) % len] as usize)
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_without_weights_and_interleaved_with_them() {
        let rr = WeightedRoundRobin::new(&[1, 1, 1]);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[rr.pick(&|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        let rr = WeightedRoundRobin::new(&[6, 2]);
        assert_eq!(rr.schedule, [0, 0, 1, 0], "reduced by the gcd, interleaved");
        let mut counts = [0usize; 2];
        for _ in 0..400 {
            counts[rr.pick(&|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
        let mut counts = [0usize; 2];
        for _ in 0..40 {
            counts[rr.pick(&|i| i == 1).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 40], "skips ineligible endpoints");
    }
}
