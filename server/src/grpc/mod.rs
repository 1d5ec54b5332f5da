//! The gRPC face of the server: the client `Chat` service and the conversions to and from wire types.

pub mod chat_service;
pub mod convert;
pub mod replication_service;
mod subscribe;
