//! The library half of the `baton` package: the failover client and the local-cluster launcher, shared by
//! the terminal client (`src/main.rs`) and the load and fault tool `baton-bench` (`src/bin/baton-bench`).

pub mod client;
pub mod local;
