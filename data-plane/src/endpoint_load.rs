//! Per-endpoint load for least-request balancing: requests in flight and a
//! peak-EWMA of response latency (Finagle's and Linkerd's estimator).
//!
//! A slower observation replaces the average at once (the "peak"); faster ones
//! pull it down with weight `exp(-Δt/τ)`, and reading decays it toward zero with
//! the same time constant, so an endpoint that looked slow is tried again after
//! a while instead of being starved forever. Everything is a relaxed atomic: a
//! lost update between two racing responses only blurs the estimate.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::clock::now_ns;

/// Decay time constant: 10 s, as in Linkerd.
const DECAY_NS: f64 = 10e9;
/// Latency assumed for an endpoint never measured: low, so new endpoints are
/// tried, but not zero, so requests in flight still count.
const DEFAULT_RTT_NS: f64 = 1e6;

/// Requests in flight to one endpoint and its latency estimate.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    stamp_ns: AtomicU64,
}

impl EndpointLoad {
    /// The endpoint's cost as least-request sees it: latency estimate × (requests
    /// in flight + 1).
    pub fn cost(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let age = now.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
        let rtt = if ewma > 0.0 {
            ewma * (-age / DECAY_NS).exp()
        } else {
            DEFAULT_RTT_NS
        };
        rtt.max(1.0) * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request started; the guard ends it.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self,
            started: now_ns(),
        }
    }

    fn observe(&self, rtt_ns: f64, now: u64) {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let age = now.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
        let next = if rtt_ns > ewma {
            rtt_ns
        } else {
            let w = (-age / DECAY_NS).exp();
            ewma * w + rtt_ns * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now, Ordering::Relaxed);
    }
}

/// One request in flight; dropping it without [`InFlight::finish`] (cancelled,
/// failed) ends it without a latency sample.
#[derive(Debug)]
pub struct InFlight<'a> {
    load: &'a EndpointLoad,
    started: u64,
}

impl InFlight<'_> {
    /// Ends the request and records its latency (until the response headers).
    pub fn finish(self) {
        let now = now_ns();
        self.load
            .observe(now.saturating_sub(self.started) as f64, now);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_decays_slowly_and_counts_in_flight() {
        let l = EndpointLoad::default();
        let t0 = 1_000_000_000;
        assert_eq!(l.cost(t0), DEFAULT_RTT_NS, "unmeasured");
        l.observe(5e6, t0);
        assert_eq!(l.cost(t0), 5e6);
        l.observe(200e6, t0 + 1);
        assert!(
            (l.cost(t0 + 1) - 200e6).abs() < 1.0,
            "a slow sample is the peak"
        );
        l.observe(5e6, t0 + 100_000_000);
        let after_fast = l.cost(t0 + 100_000_000);
        assert!(after_fast > 150e6 && after_fast < 200e6, "{after_fast}");
        let later = l.cost(t0 + 100_000_000 + 30_000_000_000);
        assert!(
            later < after_fast / 10.0,
            "decays toward retrying it: {later}"
        );
        let g1 = l.start();
        let g2 = l.start();
        assert_eq!(l.in_flight(), 2);
        let now = t0 + 100_000_000;
        assert!((l.cost(now) - 3.0 * after_fast).abs() < 1.0);
        drop(g1);
        g2.finish();
        assert_eq!(l.in_flight(), 0);
    }
}
