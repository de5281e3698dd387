//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` every [`RENEW_EVERY`];
//! another replica takes the Lease over once it has seen the record unchanged for
//! `leaseDurationSeconds`. Every write carries the `resourceVersion` read, so of
//! two replicas racing for the Lease the API server lets exactly one win (the
//! other gets 409 Conflict).
//!
//! Only the leader creates or rotates the CA root: two replicas generating roots
//! at once would split the mesh into two trust domains that do not trust each
//! other.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (and followers look at) the Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a follower re-reads the Lease, so a takeover happens soon after expiry.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long steps down before its Lease
/// expires, so two replicas never both believe they lead.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Who leads, as this replica last saw it (`/debug/ca`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Leadership {
    /// Whether this replica holds the Lease.
    pub leader: bool,
    /// The Lease's holder, if any.
    pub holder: Option<String>,
    /// This replica's identity.
    pub identity: String,
}

/// This replica's identity: `$POD_NAME`, or hostname and process id outside a pod.
pub fn identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.trim().is_empty()
    {
        return name.trim().to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mesh-controller".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the election for `namespace/name` forever, publishing what it sees.
pub fn start(api: Api<Lease>, name: String, identity: String) -> watch::Receiver<Leadership> {
    let (tx, rx) = watch::channel(Leadership {
        leader: false,
        holder: None,
        identity: identity.clone(),
    });
    tokio::spawn(async move {
        let mut elector = Elector {
            api,
            name,
            identity,
            observed: None,
            renewed: None,
        };
        loop {
            let state = elector.step().await;
            let leader = state.leader;
            tx.send_if_modified(|cur| {
                if *cur == state {
                    return false;
                }
                if cur.leader != state.leader {
                    if state.leader {
                        tracing::info!(identity = %state.identity, "became the leader");
                    } else {
                        tracing::warn!(identity = %state.identity, holder = ?state.holder, "not the leader any more");
                    }
                }
                *cur = state;
                true
            });
            tokio::time::sleep(if leader { RENEW_EVERY } else { RETRY_EVERY }).await;
        }
    });
    rx
}

struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The record last seen (resourceVersion) and when it was first seen: a
    /// holder is presumed dead once its record has not changed for the lease
    /// duration by *our* clock (no clock-skew assumptions).
    observed: Option<(String, Instant)>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    fn state(&self, leader: bool, holder: Option<String>) -> Leadership {
        Leadership {
            leader,
            holder,
            identity: self.identity.clone(),
        }
    }

    /// Whether we still count as leader although this round failed.
    fn still_leader(&self) -> bool {
        self.renewed.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
    }

    async fn step(&mut self) -> Leadership {
        let current = match self.api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot read the leader Lease");
                let leader = self.still_leader();
                let holder = leader.then(|| self.identity.clone());
                return self.state(leader, holder);
            }
        };
        let Some(lease) = current else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if holder.as_deref() == Some(self.identity.as_str()) {
            return self.write(lease, false).await;
        }
        // Someone else (or nobody) holds it.
        self.renewed = None;
        let fresh = self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv);
        if fresh {
            self.observed = Some((rv, Instant::now()));
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(LEASE_DURATION);
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= duration);
        if !expired {
            return self.state(false, holder);
        }
        tracing::info!(previous = ?holder, "the leader Lease expired: taking it over");
        self.write(lease, true).await
    }

    async fn create(&mut self) -> Leadership {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                self.state(true, Some(self.identity.clone()))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Another replica created it first: it leads.
                self.state(false, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot create the leader Lease");
                self.state(false, None)
            }
        }
    }

    /// Renews our Lease, or (`take_over`) makes it ours; the resourceVersion read
    /// is sent along, so a concurrent writer makes this a 409.
    async fn write(&mut self, mut lease: Lease, take_over: bool) -> Leadership {
        let mut spec = lease.spec.take().unwrap_or_default();
        let previous = spec.holder_identity.clone();
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        if take_over {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                self.observed = None;
                self.state(true, Some(self.identity.clone()))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Someone else wrote first; look again next round.
                self.renewed = None;
                self.state(false, previous.filter(|p| *p != self.identity))
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot renew the leader Lease");
                let leader = !take_over && self.still_leader();
                let holder = if leader {
                    Some(self.identity.clone())
                } else {
                    previous
                };
                self.state(leader, holder)
            }
        }
    }
}
