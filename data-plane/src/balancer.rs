//! Endpoint selection: lock-free round robin.
//!
//! A cluster's endpoint list is immutable between config updates, so picking is an
//! atomic increment and an index; no lock is taken on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round-robin cursor over an endpoint slice.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A cursor starting at a random position, so that many sidecars restarted
    /// together do not all hit the first endpoint first.
    pub fn new() -> RoundRobin {
        RoundRobin {
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// The next item, or `None` when `items` is empty.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        items.get(n % items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_is_even_and_handles_empty() {
        let rr = RoundRobin::new();
        let items = ["a", "b", "c"];
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            let picked = rr.pick(&items).unwrap();
            counts[items.iter().position(|i| i == picked).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        let first = *rr.pick(&items).unwrap();
        let second = *rr.pick(&items).unwrap();
        assert_ne!(first, second, "consecutive picks differ");
        assert_eq!(rr.pick::<u8>(&[]), None);
    }
}
