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
# between minute 2 and the end. With --heap it also reads, once a minute,
# each process's glibc heap (bytes in use and bytes the allocator holds, via
# gdb calling malloc_stats()), to tell a leak (in use grows) from allocator
# retention (only RSS grows); at the end it calls malloc_trim(0) in each
# process and reports how much of its RSS that returns.
# See docs/RELIABILITY.md ("Soak"). All traffic stays on 127.0.0.1.
#
# usage: bash tests/bench/soak.sh [--minutes M] [--restart-secs S]
#                                 [--revoke-secs S] [--heap] [--skip-build]
#                                 [--keep-logs DIR]
# Exit status: 0 when no byte was corrupted and every check passed, 1
# otherwise, 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --minutes M        duration (default 10)
  --restart-secs S   seconds between gateway restarts (default 180; 0: none)
  --revoke-secs S    seconds between revocation + re-enrollment cycles (default 120; 0: none)
  --heap             sample the glibc heap (in use / held) once a minute with gdb
                     (pauses each process for ~0.5 s per sample), malloc_trim(0) at the end
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
HEAP=0
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
        --heap) HEAP=1; shift ;;
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
if ((HEAP)) && ! command -v gdb >/dev/null; then
    echo "soak.sh: --heap needs gdb (apt-get install gdb)" >&2
    exit 2
fi
cd "$ROOT"

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgsoak.XXXXXX")"
PIDS=()
FG_PID=""
KEEP_PATTERNS="*.log *.json *.tsv"
on_exit_finish_run

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

release_binaries sgbench shimgate shimgate-gateway
SG="$BIN/shimgate"

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
GW_LOG="$WORK/gateway.log"
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
    GW_LOG="$WORK/gateway-$((GW_RESTARTS + 1)).log"
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
HEAPS="$WORK/heap.tsv"
if ((HEAP)); then printf 't\tname\tpid\trss_kib\trss_anon_kib\theap_in_use_kib\theap_held_kib\tarenas\n' >"$HEAPS"; fi
# Sets P_PID and P_LOG (where its stderr goes) for gateway, alice or bob.
proc_of() {
    case "$1" in
        gateway) P_PID=$GW_PID; P_LOG=$GW_LOG ;;
        alice) P_PID=$ALICE_PID; P_LOG="$WORK/alice.log" ;;
        bob) P_PID=$BOB_PID; P_LOG="$WORK/bob.log" ;;
    esac
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Anonymous resident memory (heap, stacks; VmRSS also counts the binary's pages).
anon_kib() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
sample() {
    local t=$1 name rss fds
    for name in gateway alice bob; do
        proc_of "$name"
        rss=$(rss_kib "$P_PID")
        fds=$(find "/proc/$P_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$name" "$P_PID" "${rss:-0}" "$fds" >>"$SAMPLES"
    done
}
# Calls a C function in process PID: gdb attaches (stopping it for ~0.5 s),
# runs EXPR and detaches. The functions are glibc's, so no debug info is
# needed, only the cast.
gdb_call() {
    timeout 60 gdb -batch -nx -iex 'set debuginfod enabled off' -ex "call $2" -p "$1" "/proc/$1/exe" \
        </dev/null >>"$WORK/gdb.log" 2>&1
}
# Prints "IN_USE HELD ARENAS" (KiB, KiB, count) for the glibc heap of
# process PID whose stderr goes to LOG, or "- - -". malloc_stats() prints,
# per arena and in total (with mmapped chunks), "system bytes" (held from
# the kernel) and "in use bytes" (allocated, not freed) to its stderr.
heap_kib() {
    local pid=$1 logf=$2 off
    off=$(stat -c %s "$logf" 2>/dev/null) || { echo "- - -"; return 0; }
    gdb_call "$pid" '((void (*)(void)) malloc_stats)()' || { echo "- - -"; return 0; }
    tail -c +"$((off + 1))" "$logf" | awk '
        /^Arena [0-9]+:/ { arenas++ }
        /^Total \(incl\. mmap\):/ { total = 1 }
        total && /^system bytes/ { held = $NF }
        total && /^in use bytes/ { used = $NF }
        END { if (used == "") print "- - -"; else printf "%d %d %d\n", used / 1024, held / 1024, arenas }'
}
sample_heap() {
    local t=$1 name rss anon used held arenas
    for name in gateway alice bob; do
        proc_of "$name"
        rss=$(rss_kib "$P_PID")
        anon=$(anon_kib "$P_PID")
        read -r used held arenas < <(heap_kib "$P_PID" "$P_LOG")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$name" "$P_PID" "${rss:-0}" "${anon:-0}" "$used" "$held" "$arenas" >>"$HEAPS"
    done
}
# After the traffic: each process's heap at rest, then malloc_trim(0) (free
# pages of every arena back to the kernel) and its VmRSS after.
TRIMS="$WORK/heap-trim.tsv"
trim_all() {
    local name rss anon used held arenas after
    printf 'name\tpid\trss_kib\trss_anon_kib\theap_in_use_kib\theap_held_kib\tarenas\trss_after_trim_kib\n' >"$TRIMS"
    for name in gateway alice bob; do
        proc_of "$name"
        rss=$(rss_kib "$P_PID")
        anon=$(anon_kib "$P_PID")
        read -r used held arenas < <(heap_kib "$P_PID" "$P_LOG")
        gdb_call "$P_PID" '((int (*)(unsigned long)) malloc_trim)(0)' || true
        after=$(rss_kib "$P_PID")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$P_PID" "${rss:-0}" "${anon:-0}" "$used" "$held" "$arenas" "${after:-0}" >>"$TRIMS"
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
# The heap once a minute, 10 s before the mark, so the last one still sees
# the traffic (sgbench soak stops at SECS).
next_heap=50
while kill -0 "$SOAK_PID" 2>/dev/null; do
    t=$((SECONDS - T0))
    if ((t >= next_sample)); then
        sample "$t"
        next_sample=$((next_sample + 10))
    fi
    if ((HEAP && t >= next_heap && t < SECS - 3)); then
        sample_heap "$t"
        next_heap=$((next_heap + 60))
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
if ((HEAP)); then trim_all; fi

# ---------------------------------------------------------------- report
echo
echo "soak: $MINUTES min, $GW_RESTARTS gateway restarts, $REVOKES_OK revocation cycles passed, $REVOKES_FAILED failed"
for n in "${REVOKE_NOTES[@]}"; do echo "  $n"; done
echo "traffic (sgbench soak; interrupted = failed while the gateway restarted or otherwise; every byte received was compared):"
nocolor <"$WORK/soak.log" | grep -v '^soak: [0-9]' | sed 's/^/  /'
echo "memory and descriptors, from the first sample at or after 120 s to the last (trend: least-squares slope):"
awk -F'\t' 'NR > 1 {
        if ($1 >= 120 && !($2 in first)) { first[$2] = $4; ffd[$2] = $5; fpid[$2] = $3; ft[$2] = $1 }
        last[$2] = $4; lfd[$2] = $5; lpid[$2] = $3; lt[$2] = $1
        if ($1 >= 120) {
            if (!($2 in max) || $4 > max[$2]) max[$2] = $4
            if (!($2 in min) || $4 < min[$2]) min[$2] = $4
            # Least-squares slope of VmRSS over time (one process only).
            if ($3 == fpid[$2]) { n[$2]++; sx[$2] += $1; sy[$2] += $4; sxx[$2] += $1 * $1; sxy[$2] += $1 * $4 }
        }
    }
    END {
        for (p in first) {
            note = (fpid[p] != lpid[p]) ? " (restarted in between: different processes)" : ""
            d = n[p] * sxx[p] - sx[p] * sx[p]
            trend = (n[p] >= 3 && d != 0) ? sprintf(", trend %+.0f KiB/min", 60 * (n[p] * sxy[p] - sx[p] * sy[p]) / d) : ""
            printf "  %-8s t=%ss..%ss VmRSS %d -> %d KiB (%+d KiB, min %d, max %d%s), fds %d -> %d (%+d)%s\n",
                p, ft[p], lt[p], first[p], last[p], last[p] - first[p], min[p], max[p], trend, ffd[p], lfd[p], lfd[p] - ffd[p], note
        }
    }' "$SAMPLES" | sort
echo "samples: t name pid VmRSS fds every 10 s (--keep-logs DIR keeps samples.tsv)"
if ((HEAP)); then
    echo "glibc heap once a minute (KiB): VmRSS (anonymous) / heap in use / held by malloc [arenas] (heap.tsv):"
    awk -F'\t' 'NR > 1 {
            if (!($1 in seen)) { seen[$1] = 1; ts[++nt] = $1 }
            v[$1, $2] = sprintf("%d (%d) / %s / %s [%s]", $4, $5, $6, $7, $8)
        }
        END {
            printf "  %6s  %-34s %-34s %-34s\n", "t", "gateway", "alice", "bob"
            for (i = 1; i <= nt; i++)
                printf "  %5ss  %-34s %-34s %-34s\n", ts[i], v[ts[i], "gateway"], v[ts[i], "alice"], v[ts[i], "bob"]
        }' "$HEAPS"
    echo "glibc heap from the first sample at or after 110 s to the last (KiB):"
    awk -F'\t' 'NR > 1 && $1 >= 110 && $6 != "-" {
            if (!($2 in first)) { fr[$2] = $4; fa[$2] = $5; fu[$2] = $6; fh[$2] = $7; fpid[$2] = $3; ft[$2] = $1 }
            first[$2] = 1; lr[$2] = $4; la[$2] = $5; lu[$2] = $6; lh[$2] = $7; lpid[$2] = $3; lt[$2] = $1
        }
        END {
            for (n in first) {
                note = (fpid[n] != lpid[n]) ? " (restarted in between: different processes)" : ""
                printf "  %-8s t=%ss..%ss heap in use %+d (%d -> %d), held %+d, VmRSS %+d (anonymous %+d)%s\n",
                    n, ft[n], lt[n], lu[n] - fu[n], fu[n], lu[n], lh[n] - fh[n], lr[n] - fr[n], la[n] - fa[n], note
            }
        }' "$HEAPS" | sort
    echo "after the traffic, malloc_trim(0) in each process (KiB; heap-trim.tsv):"
    awk -F'\t' 'NR > 1 {
            printf "  %-8s VmRSS %d (anonymous %d), heap in use %s, held %s [%s arenas]; VmRSS after malloc_trim(0) %d (%+d)\n",
                $1, $3, $4, $5, $6, $7, $8, $8 - $3
        }' "$TRIMS"
fi
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
