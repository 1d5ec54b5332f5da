# Everyday recipes. `just --list` shows them.

# Run every test (what CI runs).
test:
    cargo test --workspace

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# One server on 127.0.0.1:7001 with its data in ./data.
server:
    cargo run -p baton-server -- --listen 127.0.0.1:7001 --data-dir ./data

# Three servers on 127.0.0.1:7001-7003 with data in ./data/cluster (Ctrl-C stops them).
cluster:
    cargo build --release -p baton-server
    mkdir -p data/cluster && test -f data/cluster/secret || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > data/cluster/secret
    trap 'kill 0' INT TERM; for i in 1 2 3; do ./target/release/baton-server --id $i --listen 127.0.0.1:700$i --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --cluster-secret-file data/cluster/secret --data-dir data/cluster & done; wait
