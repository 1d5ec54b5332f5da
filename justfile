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
