#!/usr/bin/env bash
# `just cluster`: three baton-server processes on 127.0.0.1:7001-7003 with their data (and a generated
# cluster secret) in ./data/cluster, in the foreground; Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p baton-server
mkdir -p data/cluster
[[ -f data/cluster/secret ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >data/cluster/secret
peers=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
trap 'kill 0' INT TERM
for i in 1 2 3; do
    ./target/release/baton-server --id "$i" --listen "127.0.0.1:700$i" --peers "$peers" \
        --cluster-secret-file data/cluster/secret --data-dir data/cluster &
done
wait
