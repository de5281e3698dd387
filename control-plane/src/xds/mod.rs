//! The ADS server: State of the World and Delta streams over one gRPC service.

mod delta;
mod sotw;
pub mod status;
pub mod tracker;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::publish::Published;
use status::SyncRegistry;

/// How many responses may queue for a slow proxy before the stream task waits.
const RESPONSE_BUFFER: usize = 16;

/// Everything a stream needs, shared by all streams.
#[derive(Debug, Clone)]
pub struct XdsContext {
    /// The latest snapshot.
    pub snapshots: watch::Receiver<Published>,
    /// Sync state of every stream, for `/debug/syncz`.
    pub sync: Arc<SyncRegistry>,
    /// Controller metrics.
    pub metrics: Arc<Metrics>,
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct AdsServer {
    ctx: XdsContext,
}

impl AdsServer {
    /// A server pushing from `ctx`.
    pub fn new(ctx: XdsContext) -> Self {
        AdsServer { ctx }
    }

    /// The tonic service to mount.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let ctx = self.ctx.clone();
        let peer = crate::secure::Peer::of(&request);
        tokio::spawn(tracker::drive::<sotw::Sotw>(
            ctx,
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let ctx = self.ctx.clone();
        let peer = crate::secure::Peer::of(&request);
        tokio::spawn(tracker::drive::<delta::Delta>(
            ctx,
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
