#!/usr/bin/env bash
# shimgate load test: N (default 10,000) concurrent tunneled connections
# through one gateway. Starts a gateway (SQLite registry, --console off),
# enrolls D devices (default 2) each running `shimgate up --pool P`, and an
# origin; then `sgbench load` opens the connections through the devices'
# SOCKS proxies (round robin, R at a time), each sending B bytes that the
# origin echoes back and downloading B bytes, every byte compared with a
# deterministic pattern; all connections are held open at once at a barrier
# (memory sampled there), then each answers a ping and closes.
# Reports connections opened/failed, bytes verified, corruption, VmRSS of the
# gateway and proxies per open connection, fds and CPU seconds.
# See docs/RELIABILITY.md ("Load"). All traffic stays on 127.0.0.1.
#
# usage: bash tests/bench/load.sh [--conns N] [--bytes B] [--devices D]
#                                 [--pool P] [--ramp R] [--hold-secs S]
#                                 [--gateway-nofile N] [--json FILE]
#                                 [--skip-build] [--keep-logs DIR]
# Exit status: 0 when every connection moved its bytes intact, 1 otherwise,
# 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --conns N       concurrent connections (default 10000)
  --bytes B       bytes echoed and bytes downloaded per connection, K/M/G binary (default 64K)
  --devices D     enrolled devices sharing the connections (default 2)
  --pool P        `shimgate up --pool P`: TLS connections per device to the gateway (default 2)
  --ramp R        connections opening or transferring at once (default 256)
  --hold-secs S   seconds all connections stay open at the barrier (default 5)
  --gateway-nofile N  lower the gateway's open file limit to N (prlimit) to see what a
                  gateway started with a small `ulimit -n` does (expect failures)
  --json FILE     also write sgbench's JSON result to FILE
  --skip-build    use the binaries already in target/release
  --keep-logs DIR copy the logs to DIR before cleaning up
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONNS=10000
BYTES=64K
DEVICES=2
POOL=2
RAMP=256
HOLD=5
JSON_OUT=""
SKIP_BUILD=0
KEEP_LOGS=""
GW_NOFILE=""
while (($#)); do
    case "$1" in
        --conns | --bytes | --devices | --pool | --ramp | --hold-secs | --json | --keep-logs | --gateway-nofile)
            (($# >= 2)) || { echo "load.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --conns) CONNS="$2"; shift 2 ;;
        --bytes) BYTES="$2"; shift 2 ;;
        --devices) DEVICES="$2"; shift 2 ;;
        --pool) POOL="$2"; shift 2 ;;
        --ramp) RAMP="$2"; shift 2 ;;
        --hold-secs) HOLD="$2"; shift 2 ;;
        --json) JSON_OUT="$2"; shift 2 ;;
        --gateway-nofile) GW_NOFILE="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for v in "$CONNS" "$DEVICES" "$POOL" "$RAMP" "$HOLD"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "load.sh: $v is not a number" >&2; exit 2; }
done
((DEVICES >= 1 && POOL >= 1)) || { echo "load.sh: --devices and --pool must be at least 1" >&2; exit 2; }
[[ -z "$JSON_OUT" || "$JSON_OUT" == /* ]] || JSON_OUT="$PWD/$JSON_OUT"
[[ -z "$KEEP_LOGS" || "$KEEP_LOGS" == /* ]] || KEEP_LOGS="$PWD/$KEEP_LOGS"
cd "$ROOT"

log() { echo "== $*" >&2; }
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgload.XXXXXX")"
PIDS=()
FG_PID=""
on_exit_finish_run

# Each process holds about one descriptor per connection (sgbench: its
# sockets; a proxy: its SOCKS sockets; the gateway and the origin: the
# origin-side sockets), plus slack.
FDS_NEEDED=$((CONNS + 1024))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < FDS_NEEDED)); then
    echo "load.sh: open file limit $(ulimit -n) is below the $FDS_NEEDED needed for $CONNS connections" >&2
    exit 1
fi
log "open file limit $(ulimit -n)"

release_binaries sgbench shimgate shimgate-gateway

# One h2 connection carries at most MAX_STREAMS (wire/src/h2tuning.rs) tunnels.
MAX_STREAMS=$(sed -n 's/^pub const MAX_STREAMS: u32 = \([0-9_]*\);.*/\1/p' wire/src/h2tuning.rs | tr -d _)
if [[ -n "$MAX_STREAMS" ]] && ((CONNS > DEVICES * POOL * MAX_STREAMS)); then
    echo "load.sh: $CONNS connections exceed $DEVICES devices x pool $POOL x $MAX_STREAMS streams" >&2
    exit 2
fi

read -r ORIGIN_PORT < <("$SGBENCH" ports 1)
ORIGIN="127.0.0.1:$ORIGIN_PORT"
start_bg origin "$SGBENCH" origin --listen "$ORIGIN"
"$SGBENCH" wait-port "$ORIGIN" --pid "$BG_PID" --timeout-secs 10 || { fail "origin did not start" origin; exit 1; }

GW_SERVE_ARGS=(--console off)
start_gateway "$WORK/gateway" gateway || exit 1
if [[ -n "$GW_NOFILE" ]]; then
    prlimit --pid "$GW_PID" --nofile="$GW_NOFILE:$GW_NOFILE" || { echo "load.sh: prlimit failed" >&2; exit 1; }
    log "gateway open file limit lowered to $GW_NOFILE"
fi
gw policy add allow --to 127.0.0.1/32 >"$WORK/gateway-policy.log" 2>&1 ||
    { fail "policy add failed" gateway-policy; exit 1; }

SOCKS_ARGS=()
RSS_ARGS=(--rss "shimgate-gateway=$GW_PID")
for ((d = 1; d <= DEVICES; d++)); do
    cdir="$WORK/device$d"
    code="$(new_code)" || exit 1
    "$BIN/shimgate" --config-dir "$cdir" enroll "$code" --name "load$d" >"$WORK/enroll$d.log" 2>&1 ||
        { fail "shimgate enroll failed" "enroll$d" gateway; exit 1; }
    read -r port < <("$SGBENCH" ports 1)
    start_bg "device$d" "$BIN/shimgate" --config-dir "$cdir" up --listen "127.0.0.1:$port" --pool "$POOL"
    wait_device "$cdir" "$BG_PID" "device$d" || exit 1
    SOCKS_ARGS+=(--socks "127.0.0.1:$port")
    RSS_ARGS+=(--rss-proxy "shimgate-load$d=$BG_PID")
done
log "gateway, $DEVICES device(s) with --pool $POOL, origin: up"

T0=$SECONDS
out=(--out "$WORK/load.json")
log "sgbench load --conns $CONNS --bytes $BYTES --ramp $RAMP"
rc=0
fg_run "$SGBENCH" load "${SOCKS_ARGS[@]}" --target "$ORIGIN" --conns "$CONNS" --bytes "$BYTES" \
    --ramp "$RAMP" --hold-secs "$HOLD" "${RSS_ARGS[@]}" "${out[@]}" --threads 1 || rc=$?
log "load phase took $((SECONDS - T0)) s"
if [[ -n "$JSON_OUT" && -s "$WORK/load.json" ]]; then cp "$WORK/load.json" "$JSON_OUT"; fi
# What the gateway and proxies logged at warn or error.
for l in gateway $(seq -f 'device%g' 1 "$DEVICES"); do
    n=$(nocolor <"$WORK/$l.log" | grep -c -E ' (WARN|ERROR) ' || true)
    log "$l.log: $n warn/error lines"
    if ((n)); then nocolor <"$WORK/$l.log" | grep -E ' (WARN|ERROR) ' | sed 's/[0-9]\+/#/g' | sort | uniq -c | sort -rn | head -5 >&2; fi
done
if ((rc)); then
    show_log gateway device1
    exit 1
fi
