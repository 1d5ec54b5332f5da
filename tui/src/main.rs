//! `baton`: the terminal client. The full-screen client comes next; for now this says how to start a server.

// The UI that drives the failover client is not written yet.
#[allow(dead_code)]
mod client;

fn main() {
    println!(
        "baton {}: the terminal client is not built yet.\n\
         Start a server with `cargo run -p baton-server -- --data-dir ./data`.",
        env!("CARGO_PKG_VERSION")
    );
}
