#!/usr/bin/env bash
# shimgate soak test (not in CI): M minutes (default 10) of mixed traffic
# through one gateway (SQLite registry, --console off), every byte checked:
#   - device alice: bulk transfers (32 MiB down + 4 MiB echoed per
#     connection) and short requests (connect, ping, 1 KiB echo, close)
#     through the gateway to a local origin (`sgbench soak`);
#   - peer sessions: alice -> bob.vpn.internal:ORIGIN_PORT, bob exporting the
#     origin's port (policy allow --to bob.vpn.internal --ports ORIGIN_PORT);
#   - every --revoke-secs (default 120): a third device enrolls, moves 20
#     checked connections, is revoked (`device revoke`), must then fail,
#     and the next cycle enrolls a fresh one;
#   - every --restart-secs (default 180): the gateway is stopped and started
#     again (transfers in flight fail and are counted as interrupted;
#     corruption is counted apart and must be zero).
# Every 10 s it samples VmRSS and open fds (/proc/PID/status, /proc/PID/fd)
# of the gateway and the proxies, and at the end reports their growth
# between minute 2 and the end. See docs/RELIABILITY.md ("Soak").
# All traffic stays on 127.0.0.1.
#
# usage: bash tests/bench/soak.sh [--minutes M] [--restart-secs S]
#                                 [--revoke-secs S] [--skip-build] [--keep-logs DIR]
# Exit status: 0 when no byte was corrupted and every check passed, 1
# otherwise, 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --minutes M        duration (default 10)
  --restart-secs S   seconds between gateway restarts (default 180; 0: none)
  --revoke-secs S    seconds between revocation + re-enrollment cycles (default 120; 0: none)
  --skip-build       use the binaries already in target/release
  --keep-logs DIR    copy logs, samples and results to DIR before cleaning up
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MINUTES=10
RESTART_SECS=180
REVOKE_SECS=120
SKIP_BUILD=0
KEEP_LOGS=""
while (($#)); do
    case "$1" in
        --minutes | --restart-secs | --revoke-secs | --keep-logs)
            (($# >= 2)) || { echo "soak.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --minutes) MINUTES="$2"; shift 2 ;;
        --restart-secs) RESTART_SECS="$2"; shift 2 ;;
        --revoke-secs) REVOKE_SECS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for v in "$MINUTES" "$RESTART_SECS" "$REVOKE_SECS"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "soak.sh: $v is not a number" >&2; exit 2; }
done
((MINUTES >= 1)) || { echo "soak.sh: --minutes must be at least 1" >&2; exit 2; }
[[ -z "$KEEP_LOGS" || "$KEEP_LOGS" == /* ]] || KEEP_LOGS="$PWD/$KEEP_LOGS"
cd "$ROOT"

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgsoak.XXXXXX")"
PIDS=()
FG_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local rev=() i
    if [[ -n "$FG_PID" ]]; then rev+=("$FG_PID"); fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do rev+=("${PIDS[i]}"); done
    ((${#rev[@]} == 0)) || stop_pids "${rev[@]}"
    if [[ -n "$KEEP_LOGS" ]]; then
        mkdir -p "$KEEP_LOGS" && cp "$WORK"/*.log "$WORK"/*.json "$WORK"/*.tsv "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/release"
SGBENCH="$BIN/sgbench"
SG="$BIN/shimgate"
if ((!SKIP_BUILD)); then
    log "cargo build --release -p shimgate-gateway -p shimgate-proxy -p shimgate-tests"
    fg_run cargo build --release -p shimgate-gateway -p shimgate-proxy -p shimgate-tests
fi
for b in sgbench shimgate shimgate-gateway; do
    [[ -x "$BIN/$b" ]] || { echo "soak.sh: $BIN/$b not built" >&2; exit 1; }
done

# Removes a pid from PIDS (it was stopped).
forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- setup
{ read -r ORIGIN_PORT; read -r ALICE_SOCKS; read -r BOB_SOCKS; read -r BOB_PEER; } < <("$SGBENCH" ports 4)
ORIGIN="127.0.0.1:$ORIGIN_PORT"
start_bg origin "$SGBENCH" origin --listen "$ORIGIN"
"$SGBENCH" wait-port "$ORIGIN" --pid "$BG_PID" --timeout-secs 10 || { fail "origin did not start" origin; exit 1; }

GW_SERVE_ARGS=(--console off)
start_gateway "$WORK/gateway" gateway || exit 1
GW_RESTARTS=0
gw policy add allow --to 127.0.0.1/32 >"$WORK/policy.log" 2>&1 || { fail "policy add failed" policy; exit 1; }
gw policy add allow --to bob.vpn.internal --ports "$ORIGIN_PORT" >>"$WORK/policy.log" 2>&1 ||
    { fail "policy add failed" policy; exit 1; }

ADIR="$WORK/alice"
BDIR="$WORK/bob"
for dev in alice bob; do
    d="$ADIR"
    [[ "$dev" == bob ]] && d="$BDIR"
    code="$(new_code)" || exit 1
    "$SG" --config-dir "$d" enroll "$code" --name "$dev" >"$WORK/enroll-$dev.log" 2>&1 ||
        { fail "shimgate enroll ($dev) failed" "enroll-$dev" gateway; exit 1; }
done
set_peer_listen "$ADIR/config.toml" 127.0.0.1:0 || exit 1
set_peer_listen "$BDIR/config.toml" "127.0.0.1:$BOB_PEER" || exit 1
"$SG" --config-dir "$BDIR" export "$ORIGIN_PORT" >"$WORK/export.log" 2>&1 || { fail "shimgate export failed" export; exit 1; }
start_bg bob "$SG" --config-dir "$BDIR" up --listen "127.0.0.1:$BOB_SOCKS"
BOB_PID=$BG_PID
start_bg alice "$SG" --config-dir "$ADIR" up --listen "127.0.0.1:$ALICE_SOCKS"
ALICE_PID=$BG_PID
wait_device "$BDIR" "$BOB_PID" bob || exit 1
wait_device "$ADIR" "$ALICE_PID" alice || exit 1
for ((i = 0; ; i++)); do
    if "$SG" --config-dir "$ADIR" ping bob -c 1 >"$WORK/ping.log" 2>&1; then break; fi
    ((i < 100)) || { fail "shimgate ping bob did not succeed within 10 s" ping alice bob gateway; exit 1; }
    sleep 0.1
done
log "gateway, alice, bob, origin up; peer session alice -> bob works"

# ---------------------------------------------------------------- events
restart_gateway() {
    log "restarting the gateway (pid $GW_PID)"
    stop_pids "$GW_PID"
    forget_pid "$GW_PID"
    start_bg "gateway-$((GW_RESTARTS + 1))" "$BIN/shimgate-gateway" --data-dir "$GW_DIR" serve "${GW_SERVE_ARGS[@]}"
    GW_PID=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$GW_PORT" --pid "$GW_PID" --timeout-secs 30 ||
        { fail "gateway did not come back" "gateway-$((GW_RESTARTS + 1))"; return 1; }
    GW_RESTARTS=$((GW_RESTARTS + 1))
    log "gateway back (pid $GW_PID)"
}

REVOKES_OK=0
REVOKES_FAILED=0
REVOKE_NOTES=()
# Enroll carolN, move 20 checked connections through it, revoke it, check
# that it can no longer tunnel, stop it.
revoke_cycle() {
    local n d port code pid ok=1
    n=$((REVOKES_OK + REVOKES_FAILED + 1))
    d="$WORK/carol$n"
    read -r port < <("$SGBENCH" ports 1)
    code="$(new_code)" || return 1
    "$SG" --config-dir "$d" enroll "$code" --name "carol$n" >"$WORK/enroll-carol$n.log" 2>&1 ||
        { fail "enroll carol$n failed" "enroll-carol$n"; return 1; }
    start_bg "carol$n" "$SG" --config-dir "$d" up --listen "127.0.0.1:$port"
    pid=$BG_PID
    wait_device "$d" "$pid" "carol$n" || ok=0
    if ((ok)) && ! "$SGBENCH" load --socks "127.0.0.1:$port" --target "$ORIGIN" --conns 20 \
        --bytes 64K --hold-secs 0 --timeout-secs 60 >"$WORK/carol$n-before.log" 2>&1; then
        REVOKE_NOTES+=("carol$n: traffic before the revocation failed: $(tail -n 2 "$WORK/carol$n-before.log" | tr '\n' ' ')")
        ok=0
    fi
    if ! gw device revoke "carol$n" >"$WORK/revoke-carol$n.log" 2>&1; then
        REVOKE_NOTES+=("carol$n: device revoke failed: $(tail -n 2 "$WORK/revoke-carol$n.log" | tr '\n' ' ')")
        ok=0
    fi
    if "$SGBENCH" load --socks "127.0.0.1:$port" --target "$ORIGIN" --conns 1 \
        --bytes 1K --hold-secs 0 --timeout-secs 40 >"$WORK/carol$n-after.log" 2>&1; then
        REVOKE_NOTES+=("carol$n: still tunneled after its revocation")
        ok=0
    fi
    stop_pids "$pid"
    forget_pid "$pid"
    rm -rf "$d"
    if ((ok)); then
        REVOKES_OK=$((REVOKES_OK + 1))
        log "carol$n: enrolled, 20 checked connections, revoked, refused afterwards"
    else
        REVOKES_FAILED=$((REVOKES_FAILED + 1))
        log "carol$n: revocation cycle FAILED (see the notes at the end)"
    fi
}

SAMPLES="$WORK/samples.tsv"
printf 't\tname\tpid\trss_kib\tfds\n' >"$SAMPLES"
sample() {
    local t=$1 name pid rss fds
    for name in gateway alice bob; do
        case "$name" in
            gateway) pid=$GW_PID ;;
            alice) pid=$ALICE_PID ;;
            bob) pid=$BOB_PID ;;
        esac
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$name" "$pid" "${rss:-0}" "$fds" >>"$SAMPLES"
    done
}

# ---------------------------------------------------------------- run
SECS=$((MINUTES * 60))
log "soak: $MINUTES min; gateway restart every ${RESTART_SECS}s, revocation cycle every ${REVOKE_SECS}s"
start_bg soak "$SGBENCH" soak --socks "127.0.0.1:$ALICE_SOCKS" --target "$ORIGIN" \
    --peer-socks "127.0.0.1:$ALICE_SOCKS" --peer-dest "bob.vpn.internal:$ORIGIN_PORT" \
    --secs "$SECS" --out "$WORK/soak.json"
SOAK_PID=$BG_PID
T0=$SECONDS
next_sample=0
next_restart=$RESTART_SECS
next_revoke=$REVOKE_SECS
while kill -0 "$SOAK_PID" 2>/dev/null; do
    t=$((SECONDS - T0))
    if ((t >= next_sample)); then
        sample "$t"
        next_sample=$((next_sample + 10))
    fi
    if ((RESTART_SECS > 0 && t >= next_restart && t < SECS - 20)); then
        restart_gateway || exit 1
        next_restart=$((next_restart + RESTART_SECS))
    fi
    if ((REVOKE_SECS > 0 && t >= next_revoke && t < SECS - 30)); then
        revoke_cycle || REVOKES_FAILED=$((REVOKES_FAILED + 1))
        next_revoke=$((next_revoke + REVOKE_SECS))
    fi
    sleep 1
done
sample $((SECONDS - T0))
soak_rc=0
wait "$SOAK_PID" || soak_rc=$?
forget_pid "$SOAK_PID"

# ---------------------------------------------------------------- report
echo
echo "soak: $MINUTES min, $GW_RESTARTS gateway restarts, $REVOKES_OK revocation cycles passed, $REVOKES_FAILED failed"
for n in "${REVOKE_NOTES[@]}"; do echo "  $n"; done
echo "traffic (sgbench soak; interrupted = failed while the gateway restarted or otherwise; every byte received was compared):"
nocolor <"$WORK/soak.log" | grep -v '^soak: [0-9]' | sed 's/^/  /'
echo "memory and descriptors, from the first sample at or after 120 s to the last:"
awk -F'\t' 'NR > 1 {
        if ($1 >= 120 && !($2 in first)) { first[$2] = $4; ffd[$2] = $5; fpid[$2] = $3; ft[$2] = $1 }
        last[$2] = $4; lfd[$2] = $5; lpid[$2] = $3; lt[$2] = $1
        if ($1 >= 120) { if (!($2 in max) || $4 > max[$2]) max[$2] = $4 }
    }
    END {
        for (n in first) {
            note = (fpid[n] != lpid[n]) ? " (restarted in between: different processes)" : ""
            printf "  %-8s t=%ss..%ss VmRSS %d -> %d KiB (%+d KiB, max %d), fds %d -> %d (%+d)%s\n",
                n, ft[n], lt[n], first[n], last[n], last[n] - first[n], max[n], ffd[n], lfd[n], lfd[n] - ffd[n], note
        }
    }' "$SAMPLES" | sort
echo "samples: t name pid VmRSS fds every 10 s (--keep-logs DIR keeps samples.tsv)"
for l in gateway $(seq -f 'gateway-%g' 1 "$GW_RESTARTS") alice bob; do
    [[ -f "$WORK/$l.log" ]] || continue
    n=$(nocolor <"$WORK/$l.log" | grep -c -E ' (WARN|ERROR) ' || true)
    echo "$l.log: $n warn/error lines"
    if ((n)); then
        nocolor <"$WORK/$l.log" | grep -E ' (WARN|ERROR) ' | sed -E 's/^[0-9TZ:.-]+ +//; s/[0-9]+/#/g' |
            sort | uniq -c | sort -rn | head -4 | sed 's/^/   /'
    fi
done
if ((soak_rc || REVOKES_FAILED)); then
    echo "soak: FAILED (sgbench soak exit $soak_rc, $REVOKES_FAILED revocation cycles failed)"
    exit 1
fi
echo "soak: passed"
