#!/usr/bin/env bash
# What the gateway path costs in instructions, a figure that does not jitter
# like the times of run.sh: instructions (valgrind's callgrind, "Ir") per
# tunnel setup and per MiB moved, for shimgate-gateway and the device proxy
# (shimgate up), each run under callgrind on this machine's loopback, with
# the same origin and client as run.sh (tests/src/bin/sgbench.rs).
#
#  1. gateway and device start under callgrind with instrumentation off (their
#     start-up is not counted), and 20 warm-up connections go through;
#  2. setup: instrumentation on in both, N sequential setups (connect, SOCKS
#     handshake, CONNECT, 1-byte request and answer, close), dump;
#  3. bulk: instrumentation on, one connection moving SIZE from the origin,
#     dump (the one setup in it is a rounding error at 64 MiB).
#
# Prints the figures and each process's ten most expensive functions in the
# setup phase (self cost): the hop-by-hop picture of where a setup goes.
# Record results in docs/BENCHMARKS.md with the commit they were taken at.
#
# usage: bash tests/bench/cost.sh [--setups N] [--bulk SIZE] [--skip-build]
#                                 [--keep-logs DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SETUPS=200
BULK=64M
SKIP_BUILD=0
KEEP_LOGS=""
KEEP_PATTERNS="*.log cg-*"

usage() {
    cat <<'EOF'
usage: bash tests/bench/cost.sh [options]
  --setups N        sequential tunnel setups counted (default 200)
  --bulk SIZE       bytes of the counted bulk transfer, K/M/G binary (default 64M)
  --skip-build      use the release binaries as they are
  --keep-logs DIR   copy the logs and callgrind dumps there
Needs valgrind (installed with apt-get when missing). About two minutes.
EOF
}

while (($#)); do
    case "$1" in
        --setups | --bulk | --keep-logs)
            (($# >= 2)) || { echo "cost.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --setups) SETUPS="$2"; shift 2 ;;
        --bulk) BULK="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "cost.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ "$SETUPS" =~ ^[1-9][0-9]*$ ]] || { echo "cost.sh: --setups wants a positive number" >&2; exit 2; }
MIB="$(numfmt --from=iec "$BULK" 2>/dev/null)" || { echo "cost.sh: --bulk $BULK is not a size like 64M" >&2; exit 2; }
MIB=$((MIB / 1048576))
((MIB > 0)) || { echo "cost.sh: --bulk must be at least 1M" >&2; exit 2; }
if [[ -n "$KEEP_LOGS" && "$KEEP_LOGS" != /* ]]; then KEEP_LOGS="$PWD/$KEEP_LOGS"; fi
cd "$ROOT"

log() { echo "== $*" >&2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgcost.XXXXXX")"
PIDS=()
FG_PID=""
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
on_exit_finish_run

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    SUDO=()
    [[ "$(id -u)" == 0 ]] || SUDO=(sudo)
    log "installing valgrind"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends valgrind >&2
fi

release_binaries shimgate shimgate-gateway sgbench

# Under callgrind with counting off, a process runs several times slower.
CALLGRIND=(valgrind --tool=callgrind --instr-atstart=no --vgdb=yes)
WAIT_DEVICE_SECS=120

{ read -r ORIGIN_PORT; read -r SOCKS_PORT; } < <("$SGBENCH" ports 2)
ORIGIN="127.0.0.1:$ORIGIN_PORT"
start_bg origin "$SGBENCH" origin --listen "$ORIGIN"
"$SGBENCH" wait-port "$ORIGIN" --pid "$BG_PID" --timeout-secs 10 || { fail "origin did not start" origin; exit 1; }

log "starting shimgate-gateway and shimgate up under callgrind"
GW_WRAP=("${CALLGRIND[@]}" "--callgrind-out-file=$WORK/cg-gateway.%p")
start_gateway "$WORK/gateway" gateway || exit 1
GW=$GW_PID
gw policy add allow --to 127.0.0.1/32 >"$WORK/policy.log" 2>&1 || { fail "policy add failed" policy; exit 1; }
code="$(new_code)" || exit 1
"$BIN/shimgate" --config-dir "$WORK/device" enroll "$code" >"$WORK/enroll.log" 2>&1 ||
    { fail "enroll failed" enroll gateway; exit 1; }
start_bg device "${CALLGRIND[@]}" "--callgrind-out-file=$WORK/cg-device.%p" \
    "$BIN/shimgate" --config-dir "$WORK/device" up --listen "127.0.0.1:$SOCKS_PORT"
DEV=$BG_PID
wait_device "$WORK/device" "$DEV" device || exit 1

# One client run: WARMUP unmeasured connections, SETUPS sequential setups,
# BULK_RUNS transfers of --bulk.
client() {
    local warmup="$1" setups="$2" bulk_runs="$3"
    fg_run "$SGBENCH" measure --name cost --target "$ORIGIN" --socks "127.0.0.1:$SOCKS_PORT" \
        --warmup "$warmup" --setup-samples "$setups" --bulk-runs "$bulk_runs" --bulk-bytes "$BULK" \
        --cps-secs 0 --idle-conns 0 --verify-bytes 0 --out "$WORK/client.json" >>"$WORK/client.log" 2>&1 ||
        { fail "the client failed" client device gateway; exit 1; }
}

# The total Ir of a process's newest dump.
newest_dump() { ls -t "$WORK/cg-$1.$2".* 2>/dev/null | head -n 1; }
total_ir() {
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

# Counts what `client 0 SETUPS BULK_RUNS` costs in both processes, dumped as
# NAME; prints "GATEWAY DEVICE".
counted() {
    local name="$1" pid
    shift
    for pid in "$GW" "$DEV"; do
        callgrind_control --zero "$pid" >/dev/null
        callgrind_control --instr=on "$pid" >/dev/null
    done
    client 0 "$@"
    for pid in "$GW" "$DEV"; do
        callgrind_control --dump="$name" "$pid" >/dev/null
        callgrind_control --instr=off "$pid" >/dev/null
    done
    echo "$(total_ir "$(newest_dump gateway "$GW")") $(total_ir "$(newest_dump device "$DEV")")"
}

log "warm-up: 20 connections"
client 20 0 0
log "counting $SETUPS setups"
read -r GW_SETUP DEV_SETUP < <(counted setup "$SETUPS" 0)
GW_SETUP_DUMP="$(newest_dump gateway "$GW")"
DEV_SETUP_DUMP="$(newest_dump device "$DEV")"
log "counting a $BULK bulk transfer"
read -r GW_BULK DEV_BULK < <(counted bulk 0 1)

echo
echo "shimgate instruction counts ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), valgrind $(valgrind --version | sed 's/valgrind-//'))"
echo "gateway path on loopback; Ir counted by callgrind; $SETUPS setups, one $BULK transfer"
echo
printf '%-20s %16s %16s\n' process "Ir per setup" "Ir per MiB"
grouped() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
row() { printf '%-20s %16s %16s\n' "$1" "$(grouped $(($2 / SETUPS)))" "$(grouped $(($3 / MIB)))"; }
row shimgate-gateway "$GW_SETUP" "$GW_BULK"
row "shimgate (device)" "$DEV_SETUP" "$DEV_BULK"
row total "$((GW_SETUP + DEV_SETUP))" "$((GW_BULK + DEV_BULK))"

for which in gateway device; do
    dump="$GW_SETUP_DUMP"
    [[ "$which" == device ]] && dump="$DEV_SETUP_DUMP"
    echo
    echo "setup phase, $which: the ten functions with the most instructions of their own"
    callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null |
        grep -E '^ *[0-9,]+ \( *[0-9.]+%\) ' | grep -v 'PROGRAM TOTALS' | head -n 10 |
        sed -E 's#\./[^:]*/##; s# \[[^]]*\]$##' | cut -c1-150 || true
done
