//! SPIFFE identities and the mesh CA.
//!
//! Empty on purpose until the identity issue: the crate exists so the workspace
//! layout matches the design and dependents can be wired once. Workload identities
//! are already modelled as `mesh_model::Identity` SPIFFE IDs and carried in
//! EDS metadata; certificates, CSRs and rustls configs land here.
#![forbid(unsafe_code)]
