# Everyday recipes. `just --list` shows them. (No `just`? `pip install rust-just` or `cargo install just`.)

# Run every test (what CI runs after fmt and lint).
test:
    cargo test --workspace

# Format every crate.
fmt:
    cargo fmt --all

# Clippy with warnings as errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# One server on 127.0.0.1:7001 with its data in ./data.
server:
    cargo run -p baton-server -- --listen 127.0.0.1:7001 --data-dir ./data

# Three servers on 127.0.0.1:7001-7003 with data in ./data/cluster, no tmux (Ctrl-C stops them).
cluster:
    assets/cluster.sh

# The same three servers serving TLS, with certificates made in ./data/cluster/tls.
cluster-tls:
    CLUSTER_TLS=1 assets/cluster.sh

# The live failover demo in tmux: alice, bob and the cluster control pane (leaving tmux stops it all).
demo:
    assets/demo.sh

# The demo as a test, detached: a message, a leader kill, another message, checked on every pane.
demo-check:
    assets/demo.sh check

# The demo encrypted: certificates made in its data dir, servers on TLS, clients verifying with --tls-ca.
demo-tls:
    DEMO_TLS=1 assets/demo.sh

# The encrypted demo as a test (also checks that a plain-text client is refused).
demo-tls-check:
    DEMO_TLS=1 assets/demo.sh check

# The load and fault tool, optimised, e.g. `just bench failover --kills 50` (BENCHMARKS.md lists the runs).
# The server is built first: the tool starts the `baton-server` next to it, which must not be stale.
bench *ARGS:
    cargo build --release -p baton-server
    cargo run --release -p baton --bin baton-bench -- {{ARGS}}

# The 60-second chaos run CI does: kills, restarts and partitions under load, then every replica checked.
chaos-check:
    cargo build -p baton-server
    cargo run -p baton --bin baton-bench -- chaos --duration 60 --seed 1
