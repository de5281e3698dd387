//! Circuit breaking and the retry budget, per cluster (Envoy's thresholds).
//!
//! Counters are atomics; admission is a compare-and-swap against the limit, so
//! the request path takes no lock. A request over a limit is not queued (except
//! for a connection slot, up to `max_pending_requests`): it is answered at once
//! with 503 and the limit's name, which is what lets an overloaded service
//! recover instead of drowning in a queue.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

use crate::decode_policy::{Limits, RetryBudget};

/// Which limit turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests`: requests in flight.
    Requests,
    /// `max_pending_requests`: requests waiting for a connection.
    Pending,
}

impl Overflow {
    /// The limit's Envoy name, for the response and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "max_pending_requests",
        }
    }
}

/// A cluster's live counters; kept across config updates of the cluster so that
/// requests in flight keep counting against the new limits.
#[derive(Debug, Default)]
pub struct ClusterLoad {
    requests: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    connection_freed: Notify,
}

fn try_inc(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// Whether `retries` retries in flight fit the budget with `requests` requests
/// in flight: at most max(min_concurrency, percent % of requests).
pub fn budget_allows(budget: &RetryBudget, requests: u32, retries: u32) -> bool {
    let share = (f64::from(requests) * budget.percent / 100.0) as u32;
    retries < share.max(budget.min_concurrency)
}

impl ClusterLoad {
    /// Admits one request unless `max_requests` are in flight.
    pub fn admit(&self, limits: &Limits) -> Result<RequestSlot<'_>, Overflow> {
        if try_inc(&self.requests, limits.max_requests) {
            Ok(RequestSlot(self))
        } else {
            Err(Overflow::Requests)
        }
    }

    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A connection slot: at once while fewer than `max_connections` are in use,
    /// else waiting as one of at most `max_pending_requests`.
    pub async fn connection(&self, limits: &Limits) -> Result<ConnectionSlot<'_>, Overflow> {
        if try_inc(&self.connections, limits.max_connections) {
            return Ok(ConnectionSlot(self));
        }
        if !try_inc(&self.pending, limits.max_pending_requests) {
            return Err(Overflow::Pending);
        }
        let _pending = PendingSlot(self);
        loop {
            let freed = self.connection_freed.notified();
            if try_inc(&self.connections, limits.max_connections) {
                return Ok(ConnectionSlot(self));
            }
            freed.await;
        }
    }

    /// Starts a retry if the budget allows one now.
    pub fn try_retry(&self, budget: &RetryBudget) -> Option<RetrySlot<'_>> {
        let requests = self.requests();
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                budget_allows(budget, requests, n).then_some(n + 1)
            })
            .ok()
            .map(|_| RetrySlot(self))
    }
}

/// One admitted request; released on drop.
#[derive(Debug)]
pub struct RequestSlot<'a>(&'a ClusterLoad);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection in use; released on drop, waking a pending request.
#[derive(Debug)]
pub struct ConnectionSlot<'a>(&'a ClusterLoad);

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.connection_freed.notify_one();
    }
}

struct PendingSlot<'a>(&'a ClusterLoad);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One retry in flight; released on drop.
#[derive(Debug)]
pub struct RetrySlot<'a>(&'a ClusterLoad);

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_is_a_share_of_requests_with_a_floor() {
        let b = RetryBudget {
            percent: 20.0,
            min_concurrency: 3,
        };
        assert!(budget_allows(&b, 1, 2), "the floor allows 3");
        assert!(!budget_allows(&b, 1, 3));
        assert!(budget_allows(&b, 100, 19));
        assert!(!budget_allows(&b, 100, 20), "20% of 100");
        let none = RetryBudget {
            percent: 0.0,
            min_concurrency: 0,
        };
        assert!(!budget_allows(&none, 1000, 0));
    }

    #[test]
    fn requests_over_the_limit_are_refused_and_slots_come_back() {
        let load = ClusterLoad::default();
        let limits = Limits {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 2,
        };
        let a = load.admit(&limits).unwrap();
        let _b = load.admit(&limits).unwrap();
        assert_eq!(load.admit(&limits).unwrap_err(), Overflow::Requests);
        drop(a);
        assert!(load.admit(&limits).is_ok(), "recovers when one finishes");
        let budget = RetryBudget {
            percent: 0.0,
            min_concurrency: 1,
        };
        let r = load.try_retry(&budget).unwrap();
        assert!(load.try_retry(&budget).is_none());
        drop(r);
        assert!(load.try_retry(&budget).is_some());
    }

    #[tokio::test]
    async fn connections_queue_as_pending_up_to_the_limit() {
        let load = std::sync::Arc::new(ClusterLoad::default());
        let limits = Limits {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 10,
        };
        let first = load.connection(&limits).await.unwrap();
        let waiter = {
            let load = load.clone();
            tokio::spawn(async move { load.connection(&limits).await.map(drop).is_ok() })
        };
        // Let the waiter become pending.
        while load.pending.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            load.connection(&limits).await.unwrap_err(),
            Overflow::Pending,
            "a second waiter is over max_pending_requests"
        );
        drop(first);
        assert!(
            waiter.await.unwrap(),
            "the pending request got the freed slot"
        );
    }
}
