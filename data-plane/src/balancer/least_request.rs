//! Power of two choices: sample two different endpoints (by weight), take the
//! cheaper. Cost is latency × (in flight + 1), divided by the weight when
//! weights differ, so a heavier endpoint is treated as having more capacity.
//! Two random choices avoid the herd behaviour of "always the least loaded"
//! while still steering almost all traffic away from a slow endpoint.

use super::{Weights, sample_eligible};

pub(super) fn pick(
    w: &Weights,
    n: usize,
    eligible: &impl Fn(usize) -> bool,
    cost: &impl Fn(usize) -> f64,
) -> Option<usize> {
    let a = sample_eligible(w, n, eligible)?;
    if n == 1 {
        return Some(a);
    }
    // A second candidate other than `a`.
    let other = |i: usize| i != a && eligible(i);
    let b = if w.uniform() {
        let first = (a + 1 + fastrand::usize(..n - 1)) % n;
        if other(first) {
            Some(first)
        } else {
            sample_eligible(w, n, &other)
        }
    } else {
        sample_eligible(w, n, &other)
    };
    let Some(b) = b else {
        return Some(a);
    };
    let weighted = |i: usize| cost(i) / w.weight(i);
    Some(if weighted(b) < weighted(a) { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_of_two_wins() {
        let w = Weights::new(&[1, 1]);
        for _ in 0..100 {
            assert_eq!(pick(&w, 2, &|_| true, &|i| [10.0, 1.0][i]), Some(1));
        }
        let w = Weights::new(&[1, 1, 1, 1]);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[pick(&w, 4, &|_| true, &|i| [1.0, 1.0, 1.0, 100.0][i]).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "the slow one is never cheaper: {counts:?}");
        assert!(counts[..3].iter().all(|&c| c > 1000), "{counts:?}");
    }

    #[test]
    fn weight_counts_as_capacity() {
        // Same cost per request: the endpoint with weight 4 wins the comparison.
        let w = Weights::new(&[1, 4]);
        assert_eq!(pick(&w, 2, &|_| true, &|_| 2.0), Some(1));
        // Loaded 5× more, it loses it.
        assert_eq!(pick(&w, 2, &|_| true, &|i| [1.0, 5.0][i]), Some(0));
    }
}
