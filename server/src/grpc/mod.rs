//! The gRPC face of the server: the client `Chat` service, the peer `Replication` service, standard health
//! checking, and the conversions to and from wire types.

pub mod chat_service;
pub mod convert;
pub mod health;
pub mod replication_service;
mod subscribe;
