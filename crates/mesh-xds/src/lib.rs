//! Envoy xDS v3 as the mesh speaks it: resource types, names, packing, versions, and
//! the translation from the [`mesh_model::Model`] to per-proxy resources.
//!
//! Both sides use this crate: the controller to build what it pushes, the proxy to
//! read what it receives, so the two can never disagree on a name or a type URL.
#![forbid(unsafe_code)]

pub mod any;
pub mod authz;
pub mod metadata;
pub mod names;
pub mod node;
pub mod policy;
pub mod resources;
pub mod routes;
pub mod snapshot;
pub mod types;
pub mod version;

pub use envoy_types::pb;
pub use node::ProxyNode;
pub use snapshot::{ProxyView, Resource, Snapshot};
pub use types::ResourceType;

#[cfg(test)]
mod tests;
