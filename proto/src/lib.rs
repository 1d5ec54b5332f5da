//! Baton's wire API: the generated gRPC code (`v1`) and its descriptor set, the product's limits, the wire
//! constants and the channel construction (`tls`), each named once here so the server, the client and the
//! tests agree.

pub mod v1 {
    tonic::include_proto!("baton.v1");
}

pub mod limits;
pub mod ports;
pub mod tls;

/// The encoded `FileDescriptorSet` of `baton.proto` and `replication.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/baton_descriptor.bin"));

/// Metadata key carrying the session token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata set by a follower on UNAVAILABLE: the leader's client address (`HOST:PORT`).
pub const LEADER_HINT: &str = "baton-leader";
/// Metadata set by a follower on UNAVAILABLE: the leader's node id.
pub const LEADER_ID_HINT: &str = "baton-leader-id";
/// Metadata carrying the cluster secret on peer RPCs.
pub const CLUSTER_SECRET: &str = "baton-cluster-secret";
/// Metadata set on RESOURCE_EXHAUSTED: how many milliseconds to wait before trying again.
pub const RETRY_AFTER_MS: &str = "baton-retry-after-ms";
