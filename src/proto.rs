//! Generated protocol code. Only `csi` and `provider::{external, serve}` may use it: proto types
//! never pass the gRPC edge.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Container Storage Interface v1 (kubelet <-> driver).
pub mod csi {
    /// Package `csi.v1`.
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// The provider plugin protocol (driver <-> provider), package `v1alpha1`.
pub mod v1alpha1 {
    tonic::include_proto!("v1alpha1");
}
