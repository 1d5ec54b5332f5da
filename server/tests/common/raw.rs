//! Calls with hand-made request bytes, for requests no generated client can build: invalid UTF-8 in a
//! string field, a wrong wire type, garbage, or a request body that never arrives.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// Passes message bytes through unchanged, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// A protobuf length-delimited field (a string or bytes field) holding `payload`, whatever it is.
pub fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// A protobuf varint field.
pub fn varint_field(tag: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::Varint, &mut out);
    encode_varint(value, &mut out);
    out
}

/// A channel to `addr`, from the local address `from` if given (any of 127.0.0.0/8 reaches a server on
/// 127.0.0.1, so tests can play several client addresses).
pub async fn channel_from(addr: SocketAddr, from: Option<IpAddr>) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .local_address(from)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} from {from:?}: {e}"))
}

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/baton.v1.Chat/{method}")).expect("valid path")
}

/// Calls `Chat/<method>` with `body` as the request's encoded bytes; returns the response's bytes.
pub async fn unary(
    channel: &Channel,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    grpc.unary(super::maybe_authed(body, token), path(method), RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Calls the unary `Chat/<method>` but never sends the request message: the call can only end by the
/// server giving up on it.
pub async fn never_finished(channel: &Channel, method: &str) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let body = tokio_stream::pending::<Vec<u8>>();
    grpc.client_streaming(tonic::Request::new(body), path(method), RawCodec)
        .await
        .map(|r| r.into_inner())
}
