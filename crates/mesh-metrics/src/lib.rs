//! Prometheus pieces both binaries share, so the controller and every sidecar
//! report the same things under the same names (the dashboards rely on it).
//!
//! [`process`]: the standard process metrics (CPU, memory, file descriptors).
#![forbid(unsafe_code)]

pub mod process;

pub use process::{ProcessCollector, ProcessStats};
