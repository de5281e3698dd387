//! The mesh's own gRPC APIs, generated from the `.proto` files beside this crate.
//!
//! Envoy's xDS types come from `envoy-types`; this crate holds only what the mesh
//! defines itself, so the controller, the sidecar and tests share one definition.
#![forbid(unsafe_code)]

/// `mesh.identity.v1`: the CA's `Certify` call.
pub mod identity {
    /// Version 1 of the identity API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("mesh.identity.v1");
    }
}
