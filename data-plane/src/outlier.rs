//! Outlier detection: consecutive failures (5xx, connect failures, resets: as
//! Envoy counts them without split local-origin errors) eject an endpoint.
//!
//! The n-th ejection lasts n × the base time (capped by the maximum); each
//! interval an endpoint spends healthy lowers n by one. At most
//! `max_ejection_percent` of a cluster is ejected at once, at least one endpoint
//! can be, and never all: a cluster always keeps somewhere to send. Ejection
//! ends by itself when its time is up (checked when the balancer looks at the
//! endpoint), so there is no timer task.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::decode_policy::OutlierSpec;

/// How many of `endpoints` may be ejected at once.
pub fn max_ejections(endpoints: usize, percent: u32) -> u32 {
    if endpoints <= 1 || percent == 0 {
        return 0;
    }
    let n = u32::try_from(endpoints).unwrap_or(u32::MAX);
    (n.saturating_mul(percent) / 100).clamp(1, n - 1)
}

/// How long the `ejections`-th ejection lasts.
pub fn ejection_ns(spec: &OutlierSpec, ejections: u32) -> u64 {
    let base = spec.base_ejection_time.as_nanos() as u64;
    let max = spec.max_ejection_time.as_nanos() as u64;
    base.saturating_mul(u64::from(ejections.max(1))).min(max)
}

/// The ejections a cluster has in force, shared by its endpoints.
#[derive(Debug, Default)]
pub struct EjectedCount(AtomicU32);

impl EjectedCount {
    /// Endpoints ejected now (those whose time is up but not yet looked at
    /// still count until then).
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts an ejection carried over from a cluster's previous runtime.
    pub fn force_add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn try_add(&self, limit: u32) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn remove(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// One endpoint's failure streak and ejection state.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// Monotonic ns when the ejection ends; 0 when not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// When the last ejection ended or started, for the healthy-interval decay.
    last_change: AtomicU64,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still in the cluster.
    Kept,
    /// Ejected, for this long (ns).
    Ejected(u64),
}

impl EndpointHealth {
    /// Whether the endpoint is ejected at `now`; an ejection whose time is up
    /// ends here.
    pub fn is_ejected(&self, now: u64, cluster: &EjectedCount) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.last_change.store(now, Ordering::Relaxed);
            cluster.remove();
        }
        false
    }

    /// A response that was not a failure: the streak ends.
    pub fn success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure; ejects when the streak reaches the threshold and the cluster
    /// may lose another endpoint.
    pub fn failure(
        &self,
        now: u64,
        spec: &OutlierSpec,
        cluster: &EjectedCount,
        endpoints: usize,
    ) -> Verdict {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < spec.consecutive_5xx || self.is_ejected(now, cluster) {
            return Verdict::Kept;
        }
        if spec.enforcing_percent < 100 && fastrand::u32(..100) >= spec.enforcing_percent {
            return Verdict::Kept;
        }
        if !cluster.try_add(max_ejections(endpoints, spec.max_ejection_percent)) {
            return Verdict::Kept;
        }
        // Healthy intervals since the last change each forgive one ejection.
        let interval = (spec.interval.as_nanos() as u64).max(1);
        let healthy = now.saturating_sub(self.last_change.load(Ordering::Relaxed)) / interval;
        let previous = self.ejections.load(Ordering::Relaxed);
        let forgiven = u32::try_from(healthy).unwrap_or(u32::MAX);
        let ejections = previous.saturating_sub(forgiven) + 1;
        self.ejections.store(ejections, Ordering::Relaxed);
        let duration = ejection_ns(spec, ejections);
        self.ejected_until
            .store(now.saturating_add(duration).max(1), Ordering::Release);
        self.last_change.store(now, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Verdict::Ejected(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> OutlierSpec {
        OutlierSpec {
            consecutive_5xx: 3,
            enforcing_percent: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn ejection_limits_never_take_all() {
        assert_eq!(max_ejections(1, 100), 0, "a lone endpoint stays");
        assert_eq!(max_ejections(2, 10), 1, "at least one");
        assert_eq!(max_ejections(3, 50), 1);
        assert_eq!(max_ejections(4, 50), 2);
        assert_eq!(max_ejections(4, 100), 3, "never all");
        assert_eq!(max_ejections(10, 0), 0, "0% turns ejection off");
    }

    #[test]
    fn streaks_eject_and_time_returns_them_with_growing_backoff() {
        let (s, cluster, h) = (spec(), EjectedCount::default(), EndpointHealth::default());
        let t = 100 * S;
        assert_eq!(h.failure(t, &s, &cluster, 3), Verdict::Kept);
        h.success();
        assert_eq!(h.failure(t, &s, &cluster, 3), Verdict::Kept);
        assert_eq!(h.failure(t, &s, &cluster, 3), Verdict::Kept);
        assert_eq!(h.failure(t, &s, &cluster, 3), Verdict::Ejected(30 * S));
        assert!(h.is_ejected(t + 29 * S, &cluster));
        assert_eq!(cluster.get(), 1);
        assert!(!h.is_ejected(t + 30 * S, &cluster), "back after its time");
        assert_eq!(cluster.get(), 0);
        // Failing again at once: the second ejection is twice as long.
        let t2 = t + 31 * S;
        for _ in 0..2 {
            h.failure(t2, &s, &cluster, 3);
        }
        assert_eq!(h.failure(t2, &s, &cluster, 3), Verdict::Ejected(60 * S));
        assert!(!h.is_ejected(t2 + 60 * S, &cluster));
        // After 3 healthy intervals the count drops by 3 (to 0): base time again.
        let t3 = t2 + 60 * S + 30 * S;
        for _ in 0..2 {
            h.failure(t3, &s, &cluster, 3);
        }
        assert_eq!(h.failure(t3, &s, &cluster, 3), Verdict::Ejected(30 * S));
    }

    #[test]
    fn the_cluster_cap_holds() {
        let (s, cluster) = (spec(), EjectedCount::default());
        let a = EndpointHealth::default();
        let b = EndpointHealth::default();
        for _ in 0..3 {
            a.failure(S, &s, &cluster, 3);
        }
        assert!(a.is_ejected(2 * S, &cluster));
        for _ in 0..10 {
            assert_eq!(
                b.failure(S, &s, &cluster, 3),
                Verdict::Kept,
                "50% of 3 is 1"
            );
        }
        assert!(!b.is_ejected(2 * S, &cluster));
    }
}
