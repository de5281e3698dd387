//! The CA kept in a Kubernetes Secret (`--registry kubernetes` without
//! `--ca-dir`/`--ca-cert`): every replica signs with the same root, and a
//! restarted or rescheduled controller keeps it, so proxies keep trusting it.
//!
//! The Secret (type Opaque) holds `ca.json` (what `--ca-dir` would hold) and
//! `token-key.pk8` (so join tokens verify on every replica). Only the leader (see
//! [`super::leader`]) creates it or writes rotation steps to it, each write
//! conditional on the resourceVersion last read: a deposed leader's late write
//! is a 409 instead of a lost update. Followers re-read it every
//! [`RELOAD_EVERY`] and take on whatever the leader wrote.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_identity::{CertificateAuthority, TokenKey};
use tokio::sync::watch;

use super::leader::{self, Leadership};
use super::{Authority, CaSource};
use crate::config::ControllerArgs;
use crate::metrics::Metrics;
use crate::publish::Published;
use crate::xds::status::SyncRegistry;

/// The Secret key holding the CA state.
pub const CA_KEY: &str = mesh_identity::ca::CA_FILE;
/// The Secret key holding the join-token signing key (PKCS#8).
pub const TOKEN_KEY: &str = "token-key.pk8";
/// How often a follower re-reads the Secret (and a replica waiting for it looks).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Where the CA Secret lives, with the leadership that decides who writes it.
pub struct SecretStore {
    api: Api<Secret>,
    name: String,
    namespace: String,
    /// The resourceVersion of the Secret as last read or written by this replica.
    version: Mutex<Option<String>>,
    token_pkcs8: Vec<u8>,
    leadership: watch::Receiver<Leadership>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("secret", &format!("{}/{}", self.namespace, self.name))
            .finish_non_exhaustive()
    }
}

/// `ns/name` or `name` (namespace: `$POD_NAMESPACE`, else `mesh-system`).
pub fn split_name(value: &str) -> (String, String) {
    match value.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "mesh-system".into()),
            value.to_string(),
        ),
    }
}

/// What the Secret holds, parsed.
struct Contents {
    ca: CertificateAuthority,
    token_pkcs8: Vec<u8>,
    version: Option<String>,
}

fn parse(secret: &Secret, trust_domain: &str) -> anyhow::Result<Contents> {
    let data = secret.data.as_ref().context("the CA Secret has no data")?;
    let ca_json = data
        .get(CA_KEY)
        .with_context(|| format!("the CA Secret has no {CA_KEY}"))?;
    let ca_json = std::str::from_utf8(&ca_json.0).context("ca.json is not UTF-8")?;
    let ca = CertificateAuthority::from_json(trust_domain, ca_json)?;
    let token_pkcs8 = data
        .get(TOKEN_KEY)
        .with_context(|| format!("the CA Secret has no {TOKEN_KEY}"))?
        .0
        .clone();
    TokenKey::from_pkcs8(&token_pkcs8).map_err(anyhow::Error::msg)?;
    Ok(Contents {
        ca,
        token_pkcs8,
        version: secret.metadata.resource_version.clone(),
    })
}

fn secret_data(ca_json: String, token_pkcs8: &[u8]) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (CA_KEY.to_string(), ByteString(ca_json.into_bytes())),
        (TOKEN_KEY.to_string(), ByteString(token_pkcs8.to_vec())),
    ])
}

impl SecretStore {
    /// This replica's view of who leads.
    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    fn is_leader(&self) -> bool {
        self.leadership.borrow().leader
    }

    fn set_version(&self, v: Option<String>) {
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    fn version(&self) -> Option<String> {
        self.version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes `ca_json` (a rotation step) to the Secret; only the leader may, and
    /// only over the version it last saw.
    pub async fn save(&self, ca_json: String) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.is_leader(),
            "not the leader any more: the CA Secret is left to the new leader"
        );
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: self.version(),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(secret_data(ca_json, &self.token_pkcs8)),
            ..Secret::default()
        };
        let written = self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 409 => anyhow::anyhow!(
                    "the CA Secret {}/{} was changed by another replica; not overwriting it",
                    self.namespace,
                    self.name
                ),
                e => anyhow::Error::new(e).context("cannot write the CA Secret"),
            })?;
        self.set_version(written.metadata.resource_version);
        Ok(())
    }

    async fn read(&self, trust_domain: &str) -> anyhow::Result<Option<Contents>> {
        match self.api.get_opt(&self.name).await? {
            Some(s) => parse(&s, trust_domain)
                .map(Some)
                .with_context(|| format!("CA Secret {}/{} is unusable", self.namespace, self.name)),
            None => Ok(None),
        }
    }
}

impl Authority {
    /// Loads the CA from its Secret, or (leader only) creates it; followers wait
    /// until the leader has. Starts the leader election.
    pub async fn from_kubernetes(
        args: &ControllerArgs,
        client: Client,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let td = args.trust_domain.as_str();
        let (namespace, name) = split_name(&args.ca_secret);
        let (lease_ns, lease_name) = split_name(&args.leader_lease);
        let identity = leader::identity();
        tracing::info!(%identity, lease = %format!("{lease_ns}/{lease_name}"), secret = %format!("{namespace}/{name}"), "CA kept in a Kubernetes Secret; electing the leader that creates and rotates it");
        let leadership = leader::start(
            Api::<Lease>::namespaced(client.clone(), &lease_ns),
            lease_name,
            identity,
        );
        let api = Api::<Secret>::namespaced(client, &namespace);
        let mut store = SecretStore {
            api,
            name,
            namespace,
            version: Mutex::new(None),
            token_pkcs8: Vec::new(),
            leadership,
        };
        let mut waiting_logged = false;
        let contents = loop {
            match store.read(td).await {
                Ok(Some(c)) => break c,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot load the CA Secret; retrying"
                    );
                    tokio::time::sleep(RELOAD_EVERY).await;
                    continue;
                }
            }
            if store.is_leader() {
                match store.create(td, args.root_cert_ttl).await {
                    Ok(c) => break c,
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot create the CA Secret; retrying"
                    ),
                }
            } else if !waiting_logged {
                tracing::info!(
                    secret = %format!("{}/{}", store.namespace, store.name),
                    "no CA Secret yet: waiting for the leader to create it"
                );
                waiting_logged = true;
            }
            let mut lead = store.leadership.clone();
            let _ = tokio::time::timeout(RELOAD_EVERY, lead.changed()).await;
        };
        tracing::info!(signers = contents.ca.signers(), version = ?contents.version, "CA loaded from the Kubernetes Secret");
        let tokens = TokenKey::from_pkcs8(&contents.token_pkcs8).map_err(anyhow::Error::msg)?;
        store.token_pkcs8 = contents.token_pkcs8;
        store.set_version(contents.version);
        let mut authority = Self::new(
            contents.ca,
            tokens,
            CaSource::KubernetesSecret,
            None,
            args.workload_cert_ttl,
            args.root_cert_ttl,
            args.rotation_grace,
            metrics,
        );
        authority.secret = Some(store);
        Ok(Arc::new(authority))
    }

    /// Keeps this replica's CA in step with the Secret: followers reload it when
    /// its resourceVersion changes; a replica that becomes the leader re-reads it
    /// and finishes a rotation the previous leader left half-done.
    pub fn start_secret_sync(
        self: &Arc<Self>,
        sync: Arc<SyncRegistry>,
        snapshots: watch::Receiver<Published>,
    ) {
        if self.secret.is_none() {
            return;
        }
        let authority = self.clone();
        tokio::spawn(async move {
            let Some(store) = &authority.secret else {
                return;
            };
            let mut was_leader = false;
            let mut lead = store.leadership.clone();
            loop {
                let leader = lead.borrow_and_update().leader;
                if !leader || !was_leader {
                    // Followers follow; a new leader starts from what is stored.
                    if let Err(e) = authority.reload_from_secret(store).await {
                        tracing::warn!(error = format!("{e:#}"), "cannot reload the CA Secret");
                    } else if leader {
                        was_leader = true;
                        if let Err(e) = authority.resume_rotation(sync.clone(), snapshots.clone()) {
                            tracing::warn!(error = %e, "cannot resume the root rotation");
                        }
                    }
                }
                if !leader {
                    was_leader = false;
                }
                let _ = tokio::time::timeout(RELOAD_EVERY, lead.changed()).await;
            }
        });
    }

    async fn reload_from_secret(&self, store: &SecretStore) -> anyhow::Result<()> {
        let Some(contents) = store.read(&self.trust_domain).await? else {
            anyhow::bail!("the CA Secret was deleted; keeping the CA in memory");
        };
        if contents.version.is_some() && contents.version == store.version() {
            return Ok(());
        }
        if contents.token_pkcs8 != store.token_pkcs8 {
            tracing::warn!(
                "the join-token key in the CA Secret changed; tokens are verified with the key loaded at start until a restart"
            );
        }
        let changed = {
            let mut ca = self.write();
            let changed = ca.to_json() != contents.ca.to_json();
            *ca = contents.ca;
            changed
        };
        store.set_version(contents.version.clone());
        tracing::info!(version = ?contents.version, "CA reloaded from the Kubernetes Secret");
        self.publish();
        if changed {
            self.serving_refresh.notify_one();
        }
        Ok(())
    }
}

impl SecretStore {
    /// Creates the Secret with a fresh root and token key (leader only); a
    /// Secret another replica created first is read instead.
    async fn create(&self, trust_domain: &str, root_ttl: Duration) -> anyhow::Result<Contents> {
        let ca = CertificateAuthority::generate(trust_domain, root_ttl)?;
        let token_pkcs8 = TokenKey::generate_pkcs8();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_string(),
                    "mesh".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(secret_data(ca.to_json(), &token_pkcs8)),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %format!("{}/{}", self.namespace, self.name), "created a new mesh root CA in the Kubernetes Secret");
                Ok(Contents {
                    ca,
                    token_pkcs8,
                    version: created.metadata.resource_version,
                })
            }
            Err(kube::Error::Api(s)) if s.code == 409 => self
                .read(trust_domain)
                .await?
                .context("the CA Secret exists but cannot be read"),
            Err(e) => Err(anyhow::Error::new(e).context("cannot create the CA Secret")),
        }
    }
}
