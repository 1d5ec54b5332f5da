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

/// A server address as users give it: `HOST:PORT`, the port from 1 to 65535 (without one, or with one out
/// of range, the transport would quietly dial port 80). Returns it trimmed.
pub fn host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} must be HOST:PORT (the port is missing)"));
    };
    if host.is_empty() {
        return Err(format!("{s:?} must be HOST:PORT (the host is missing)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?}: the port must be a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_addresses_need_a_host_and_a_valid_port() {
        assert_eq!(
            super::host_port(" 127.0.0.1:7001 "),
            Ok("127.0.0.1:7001".into())
        );
        assert_eq!(
            super::host_port("chat.example:443"),
            Ok("chat.example:443".into())
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            ":7001",
            "host:port",
            "",
        ] {
            let e = super::host_port(bad).unwrap_err();
            assert!(
                e.contains("HOST:PORT") || e.contains("port must be"),
                "{bad}: {e}"
            );
        }
    }
}
