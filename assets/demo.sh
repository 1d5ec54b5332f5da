#!/usr/bin/env bash
# `just demo` and `just demo-check`: the live three-pane failover demo.
#
#   assets/demo.sh          builds, starts the control pane (which starts three baton-server processes with
#                           a fresh data dir and cluster secret), creates alice and bob, and opens tmux with
#                           alice's client, bob's client and the control pane. Leaving tmux (detach, or
#                           close every pane) stops everything it started.
#   assets/demo.sh check    the same, detached, as a test: alice writes to bob, the control pane kills the
#                           leader (`k`), alice writes again; bob must hold both messages exactly once and
#                           every pane must name the new leader; then the old leader is restarted and must
#                           rejoin as a follower. Cleans up even when it fails. With DEMO_CAPTURE=FILE it
#                           writes the three panes after the failover to FILE.
#
# BATON_DEMO_PORT (default 7401) is the first of the three loopback ports. With DEMO_TLS=1 (`just demo-tls`,
# `just demo-tls-check`) everything is encrypted: the control pane has `baton-server certs` make a CA and
# node certificates in the demo's data directory, the servers serve TLS and verify each other, and the
# clients verify the servers with --tls-ca; the check also makes sure a plain-text client is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-demo}
case "$mode" in
demo | check) ;;
*)
    echo "usage: $0 [check]" >&2
    exit 2
    ;;
esac
if ! command -v tmux >/dev/null 2>&1; then
    echo "The demo runs in tmux, which is not installed: apt-get install tmux (Debian, Ubuntu), brew install tmux (macOS)." >&2
    exit 1
fi

port=${BATON_DEMO_PORT:-7401}
tls=${DEMO_TLS:-0}
[[ $tls == 0 || $tls == 1 ]] || {
    echo "DEMO_TLS must be 0 or 1" >&2
    exit 2
}
servers=(--server "127.0.0.1:$port" --server "127.0.0.1:$((port + 1))" --server "127.0.0.1:$((port + 2))")
declare -A password=([alice]=alice-demo-password [bob]=bob-demo-password)
# How long any one step may take (a cold CI machine is slow; a healthy failover takes about a second).
deadline_s=${DEMO_DEADLINE_S:-30}

# DEMO_PROFILE=debug uses the debug binaries (CI has just built them for the tests; a release build
# there would take minutes more).
if [ "${DEMO_PROFILE:-release}" = debug ]; then
    cargo build --quiet --workspace --bins
    bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/baton"
else
    # Two builds, as `cargo run --release` (baton alone) and its build of the server do it: one package
    # per build keeps each one's feature set, so neither rebuilds the other's dependencies.
    cargo build --release --quiet -p baton
    cargo build --release --quiet -p baton-server
    bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/baton"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/baton-demo.XXXXXX")
sock="baton-demo-$$"
tm() { tmux -L "$sock" "$@"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    # Closing the panes hangs up the control pane, which stops its servers (SIGTERM, then SIGKILL); should
    # it be gone already, the kernel's parent-death signal has killed them. The pid files it removes say
    # when they are gone; any left after the deadline is killed here.
    tm kill-server 2>/dev/null || true
    rm -f "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/$sock"
    local until=$((SECONDS + 10))
    while compgen -G "$dir/cluster/node*.pid" >/dev/null && ((SECONDS < until)); do
        sleep 0.1
    done
    for f in "$dir"/cluster/node*.pid; do
        [[ -f $f ]] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Pane ids by role.
declare -A pane

screen() { tm capture-pane -p -t "${pane[$1]:-none}"; }

show_all() {
    for who in alice bob control; do
        echo "----- $who -----"
        screen "$who" 2>/dev/null || echo "(pane gone)"
    done
    for f in "$dir"/cluster/node*.log; do
        [[ -f $f ]] || continue
        echo "----- $(basename "$f") (last lines) -----"
        tail -n 15 "$f"
    done
}

fail() {
    echo "demo: $*" >&2
    show_all >&2
    exit 1
}

# Waits until pane $1's screen matches the extended regex $3 ($2 says what for the failure message).
wait_for() {
    local who=$1 what=$2 pattern=$3 until=$((SECONDS + deadline_s))
    until screen "$who" | grep -Eq -- "$pattern"; do
        if [[ $(tm display-message -p -t "${pane[$who]}" '#{pane_dead}' 2>/dev/null || echo 1) == 1 ]]; then
            fail "$who's pane closed while waiting for $what"
        fi
        ((SECONDS < until)) || fail "waited ${deadline_s}s in $who's pane for $what"
        sleep 0.05
    done
}

type_line() {
    tm send-keys -t "${pane[$1]}" -l "$2"
    tm send-keys -t "${pane[$1]}" Enter
}

# The control pane, alone in the window at first, then alice and bob above it. A detached session's size
# is fixed here; attaching resizes it to the terminal.
if [[ $mode == check ]]; then
    cols=120 lines=40
else
    cols=$(tput cols 2>/dev/null || echo 120)
    lines=$(tput lines 2>/dev/null || echo 40)
    ((cols >= 100)) || cols=100
    ((lines >= 36)) || lines=36
fi
control_args=(--local-data-dir "$dir/cluster" --local-port-base "$port")
((tls)) && control_args+=(--local-tls)
tm new-session -d -s demo -n baton -x "$cols" -y "$lines" "$bin" control "${control_args[@]}"
tm set-option -g remain-on-exit on
tm set-option -g mouse on
pane[control]=$(tm display-message -p -t demo '#{pane_id}')
wait_for control "a leader" 'Leader: node [0-9]'

# The clients trust the CA the control pane made for its servers (in its data directory).
client_tls=()
if ((tls)); then
    client_tls=(--tls-ca "$dir/cluster/tls/ca.pem")
    [[ -f $dir/cluster/tls/ca.pem ]] || fail "no CA in $dir/cluster/tls"
fi

for who in alice bob; do
    "$bin" create-account "${servers[@]}" "${client_tls[@]}" --user "$who" --password "${password[$who]}" >/dev/null ||
        fail "could not create $who"
done

client() {
    local who=$1
    mkdir -p "$dir/$who"
    # Each client has its own config and log directories, so a personal config file plays no part.
    local tls_flags=""
    ((${#client_tls[@]} == 0)) || tls_flags=$(printf ' %q' "${client_tls[@]}")
    printf 'env XDG_CONFIG_HOME=%q XDG_CACHE_HOME=%q %q %s%s --user %q' \
        "$dir/$who/config" "$dir/$who/cache" "$bin" "${servers[*]}" "$tls_flags" "$who"
}
pane[alice]=$(tm split-window -v -b -l 62% -t "${pane[control]}" -P -F '#{pane_id}' "$(client alice)")
pane[bob]=$(tm split-window -h -t "${pane[alice]}" -P -F '#{pane_id}' "$(client bob)")

# Sign in (the name is filled in by --user, the cursor waits in the password field) and open the
# conversation with the other one.
for who in alice bob; do
    wait_for "$who" "the sign-in screen" 'sign in|Sign in'
    type_line "$who" "${password[$who]}"
    wait_for "$who" "signing in" "Signed in as $who"
done
declare -A other=([alice]=bob [bob]=alice)
for who in alice bob; do
    tm send-keys -t "${pane[$who]}" C-f
    tm send-keys -t "${pane[$who]}" -l "${other[$who]}"
    # The answer for the whole name (not an earlier one for a prefix), with the account selected.
    wait_for "$who" "the search for ${other[$who]}" "matching \\*${other[$who]}\\* · page"
    wait_for "$who" "${other[$who]} in the search" "› [●○] ${other[$who]}"
    tm send-keys -t "${pane[$who]}" Enter
    wait_for "$who" "the conversation" "To ${other[$who]}"
done

if [[ $mode == demo ]]; then
    tm select-pane -t "${pane[alice]}"
    # From now on a pane that is left closes, and the session ends with the last one.
    tm set-option -g remain-on-exit off
    if ((tls)); then
        encryption="TLS: CA and certificates in $dir/cluster/tls, clients verify with --tls-ca"
    else
        encryption="plain text (loopback only; \`just demo-tls\` for TLS)"
    fi
    cat <<EOF
Baton demo: three servers on 127.0.0.1:$port-$((port + 2)), data in $dir (deleted afterwards).
  Encryption: $encryption.
  alice's password: ${password[alice]}    bob's password: ${password[bob]}
  Top: alice (left) and bob (right), each in the conversation with the other: type and press Enter.
  Bottom: the control pane: k kills the leader, 1-3 kill a node, r then 1-3 restarts it, q quits.
  In a client F2 shows the cluster as it sees it, F1 every key. Click a pane (or Ctrl-b + arrow) to move.
  Leaving tmux (Ctrl-b d, or closing every pane) stops every process the demo started.
EOF
    read -r -t 30 -p "Press Enter to open the demo… " _ || true
    env -u TMUX tmux -L "$sock" attach -t demo || true
    exit 0
fi

# ---- check ----
if ((tls)); then
    # Encrypted for real: every server says so, and a client without the CA is refused with a reason.
    for i in 1 2 3; do
        grep -q "serving TLS" "$dir/cluster/node$i.log" || fail "node $i does not serve TLS"
    done
    if out=$("$bin" create-account "${servers[@]}" --user mallory --password mallory-password 2>&1); then
        fail "a plain-text client was served by the TLS cluster"
    fi
    grep -q -- "--tls-ca" <<<"$out" || fail "the plain-text client's error does not say to pass --tls-ca: $out"
    echo "demo-check: every server serves TLS; a plain-text client was refused: $out"
fi
# A literal text as an extended regex.
re() { printf '%s' "$1" | sed -e 's/[][\\.^$*+?(){}|/]/\\&/g'; }
count() { screen "$1" | grep -oF -- "$2" | wc -l | tr -d " "; }

# Short enough not to wrap in the narrowest pane, so that each one is found on one line.
first="hello bob (1)"
second="still here (2)"
type_line alice "$first"
wait_for bob "alice's first message" "$(re "$first")"
wait_for alice "the first message acknowledged" "$(re "$first").*✓"

old=$(screen control | sed -nE 's/.*Leader: node ([0-9]+).*/\1/p' | head -n 1)
[[ -n $old ]] || fail "the control pane names no leader"
tm send-keys -t "${pane[control]}" k
wait_for control "the kill" "killed leader $old"
wait_for control "a new leader" "Leader: node [^$old ]"
new=$(screen control | sed -nE 's/.*Leader: node ([0-9]+).*/\1/p' | head -n 1)
[[ $new != "$old" ]] || fail "the leader is still $old"
echo "demo-check: killed leader $old; node $new leads"

type_line alice "$second"
wait_for bob "alice's second message" "$(re "$second")"
wait_for alice "the second message acknowledged" "$(re "$second").*✓"

# Every pane names the new leader: both status lines and the control pane.
wait_for alice "the new leader in the status line" "leader $new"
wait_for bob "the new leader in the status line" "leader $new"
wait_for control "the new leader in the log" "node $new leads"

for m in "$first" "$second"; do
    n=$(count bob "$m")
    [[ $n == 1 ]] || fail "bob's pane shows \"$m\" $n times, not once"
done

if [[ -n ${DEMO_CAPTURE:-} ]]; then
    {
        echo "# The three panes of \`just demo\` after the control pane killed leader $old (\`k\`): captured by"
        echo "# \`DEMO_CAPTURE=assets/demo-after-failover.txt just demo-check\`."
        for who in alice bob control; do
            echo
            echo "── $who ──"
            screen "$who" | sed -e 's/[[:space:]]*$//'
        done
    } >"$DEMO_CAPTURE"
    echo "demo-check: wrote $DEMO_CAPTURE"
fi

# The old leader comes back as a follower of the new one.
tm send-keys -t "${pane[control]}" r "$old"
wait_for control "the old leader rejoining" "node $old restarted, following $new"

echo "demo-check: bob saw both messages exactly once; every pane names leader $new; node $old rejoined as a follower$( ((tls)) && echo " (all over TLS)")"
