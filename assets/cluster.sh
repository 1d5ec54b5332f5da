#!/usr/bin/env bash
# `just cluster`: three baton-server processes on 127.0.0.1:7001-7003 with their data (and a generated
# cluster secret) in ./data/cluster, in the foreground; Ctrl-C stops them all. With CLUSTER_TLS=1
# (`just cluster-tls`) they serve TLS, with a CA and node certificates made in ./data/cluster/tls on first
# use; clients then need `--tls-ca data/cluster/tls/ca.pem`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p baton-server
mkdir -p data/cluster
[[ -f data/cluster/secret ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >data/cluster/secret
peers=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
tls=()
if [[ ${CLUSTER_TLS:-0} == 1 ]]; then
    [[ -f data/cluster/tls/ca.pem ]] || ./target/release/baton-server certs --out data/cluster/tls --nodes 3 >/dev/null
    echo "TLS: clients connect with --tls-ca data/cluster/tls/ca.pem" >&2
fi
trap 'kill 0' INT TERM
for i in 1 2 3; do
    if [[ ${CLUSTER_TLS:-0} == 1 ]]; then
        tls=(--tls-cert "data/cluster/tls/node-$i.pem" --tls-key "data/cluster/tls/node-$i-key.pem"
            --tls-ca data/cluster/tls/ca.pem)
    fi
    ./target/release/baton-server --id "$i" --listen "127.0.0.1:700$i" --peers "$peers" \
        --cluster-secret-file data/cluster/secret --data-dir data/cluster "${tls[@]}" &
done
wait
