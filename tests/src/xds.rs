//! A raw ADS client that lets tests drive the protocol step by step.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use mesh_xds::ProxyNode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// The node a mesh sidecar for `workload` in `default` would send.
pub fn node(workload: &str) -> Node {
    ProxyNode {
        id: format!("{workload}.default"),
        workload: Some(workload.into()),
        namespace: "default".into(),
        admin_address: Some("127.0.0.1:15000".into()),
    }
    .to_node()
}

/// One open stream of either variant.
pub struct AdsStream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

/// A State-of-the-World stream.
pub type Sotw = AdsStream<DiscoveryRequest, DiscoveryResponse>;
/// A Delta stream.
pub type Delta = AdsStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

async fn client(url: &str) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

impl Sotw {
    /// Opens a SotW stream to `url`.
    pub async fn open(url: &str) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let rx = client(url)
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open SotW stream")
            .into_inner();
        AdsStream { tx, rx }
    }
}

impl Delta {
    /// Opens a Delta stream to `url`.
    pub async fn open(url: &str) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let rx = client(url)
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open Delta stream")
            .into_inner();
        AdsStream { tx, rx }
    }
}

impl<Req, Resp> AdsStream<Req, Resp> {
    /// Sends one request.
    pub async fn send(&self, req: Req) {
        self.tx.send(req).await.expect("stream open");
    }

    /// The next response, or a panic after 5 s.
    pub async fn recv(&mut self) -> Resp {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("stream closed by the server"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => panic!("no response within 5 s"),
        }
    }

    /// The stream's error status, if the server ends it with one within 5 s.
    pub async fn recv_error(&mut self) -> Option<tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Err(status)) => Some(status),
            _ => None,
        }
    }

    /// Whether nothing arrives within `quiet` (a pure ACK must not be answered).
    pub async fn is_quiet(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.rx.message())
            .await
            .is_err()
    }
}
