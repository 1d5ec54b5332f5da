//! `baton`: the terminal client. The full-screen client comes next; for now this says how to start a server.

fn main() {
    println!(
        "baton {}: the terminal client is not built yet.\n\
         Start a server with `cargo run -p baton-server -- --data-dir ./data`.",
        env!("CARGO_PKG_VERSION")
    );
}
