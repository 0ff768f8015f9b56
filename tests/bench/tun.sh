#!/usr/bin/env bash
# shimgate TUN-mode benchmark: measures, in one run and with the same client
# code (tests/src/bin/sgbench.rs, run inside the device's namespace), three
# ways from a device in TUN mode to an origin reachable only through the
# gateway:
#   tun        the client connects straight to the origin's address, which
#              `shimgate up --tun` routes into shimgate0 (userspace TCP stack)
#   socks      the same client through the same device's SOCKS port
#              127.0.0.1:1080 (the gateway path of run.sh)
#   tun2proxy  the anchor: tun2proxy (a tun2socks program, cargo install,
#              cached outside the clone; skipped with a line where it can't
#              be built) on its own TUN interface, pointed at shimgate's
#              SOCKS port
# for bulk throughput, connection setup latency, connections per second and
# the device's CPU seconds per GB, then prints a table and the targets
# (TUN bulk >= 0.8x the SOCKS path, TUN setup p50 <= 1.3x the SOCKS path).
#
#  dev 198.51.100.2 --veth-- 198.51.100.1 gw 203.0.113.1 --veth-- 203.0.113.2 intra
#  shimgate up --tun        shimgate-gateway (ip_forward=0)       sgbench origin
#  sgbench measure                                                 (+203.0.113.3)
#
# Needs root (network namespaces, /dev/net/tun). All traffic stays in the
# three namespaces it makes (documentation-range addresses only; the VPN
# range is 192.0.2.0/24); they are removed on exit, also on failure.
# See docs/BENCHMARKS.md, "TUN mode".
#
# usage: bash tests/bench/tun.sh [--quick] [--skip-build] [--skip-install]
#                                [--paths tun,socks,tun2proxy] [--json FILE]
# Exit status: 0 when every selected path ran or was skipped with a reason
# (whether or not the targets are met), 1 when a path failed, 2 for a usage
# error.
set -euo pipefail

usage() {
    sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --paths LIST       comma-separated subset of tun,socks,tun2proxy (default: all)
  --json FILE        also write all results and the ratios as JSON to FILE
  --quick            small sizes for a smoke test (256 MiB bulk x1, 200 samples, 1 s)
  --bulk-bytes N     bytes per bulk transfer, suffix K/M/G binary (default 1G)
  --bulk-runs N      timed bulk transfers per path, median reported (default 5)
  --setup-samples N  sequential setup latency samples (default 1000)
  --cps-secs S       measured seconds of the 8-client connections/s test (default 3)
  --skip-build       use the binaries already in target/release
  --skip-install     don't apt-get install missing tools nor cargo install tun2proxy
  --keep-logs DIR    copy the logs and result files to DIR before cleaning up
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ALL_PATHS="tun socks tun2proxy"
PATHS="${ALL_PATHS// /,}"
JSON_OUT=""
SKIP_BUILD=0
SKIP_INSTALL=0
KEEP_LOGS=""
BULK_BYTES=1G
BULK_RUNS=5
SETUP_SAMPLES=1000
CPS_CLIENTS=8
CPS_SECS=3

while (($#)); do
    case "$1" in
        --paths | --json | --bulk-bytes | --bulk-runs | --setup-samples | --cps-secs | --keep-logs)
            (($# >= 2)) || { echo "tun.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --paths) PATHS="$2"; shift 2 ;;
        --json) JSON_OUT="$2"; shift 2 ;;
        --quick) BULK_BYTES=256M; BULK_RUNS=1; SETUP_SAMPLES=200; CPS_SECS=1; shift ;;
        --bulk-bytes) BULK_BYTES="$2"; shift 2 ;;
        --bulk-runs) BULK_RUNS="$2"; shift 2 ;;
        --setup-samples) SETUP_SAMPLES="$2"; shift 2 ;;
        --cps-secs) CPS_SECS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "tun.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for p in ${PATHS//,/ }; do
    case "$p" in
        tun | socks | tun2proxy) ;;
        *) echo "tun.sh: unknown path $p (${ALL_PATHS// /, })" >&2; exit 2 ;;
    esac
done
if [[ -n "$JSON_OUT" && "$JSON_OUT" != "-" && "$JSON_OUT" != /* ]]; then
    JSON_OUT="$PWD/$JSON_OUT"
fi
if [[ -n "$KEEP_LOGS" && "$KEEP_LOGS" != /* ]]; then
    KEEP_LOGS="$PWD/$KEEP_LOGS"
fi
cd "$ROOT"

log() { echo "== $*" >&2; }
# descendants, stop_pids, fg_run, start_bg, show_log, fail, gw, new_code,
# wait_device, netns_add, netns_veth, netns_cleanup, gateway_init_ns,
# gateway_serve_ns, find_tun2proxy, release_binaries (they use WORK, PIDS,
# BIN, SGBENCH, NETNS).
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
want() { [[ ",$PATHS," == *",$1,"* ]]; }

[[ "$(id -u)" == 0 ]] || { echo "tun.sh: needs root (network namespaces, /dev/net/tun)" >&2; exit 1; }
[[ -c /dev/net/tun ]] || { echo "tun.sh: /dev/net/tun is missing" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgbench-tun.XXXXXX")"
PIDS=()
FG_PID=""
NETNS=()
# Namespace names: short (interface-name rules don't apply, but keep them
# readable) and unique per run.
DEV_NS="sgb-dev-$$"
GW_NS="sgb-gw-$$"
INTRA_NS="sgb-intra-$$"

# besides what finish_run does (tests/bench/lib.sh): whatever still runs in
# our namespaces, then the namespaces (the TUN interfaces go with them).
cleanup_extra() { netns_cleanup; }
on_exit_finish_run

# ---------------------------------------------------------------- tools
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v jq >/dev/null || need+=(jq)
command -v ps >/dev/null || need+=(procps)
if ((${#need[@]})); then
    ((!SKIP_INSTALL)) || { echo "tun.sh: missing ${need[*]} (and --skip-install)" >&2; exit 1; }
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
ulimit -n 65536 2>/dev/null || true

# ---------------------------------------------------------------- build
release_binaries --workspace shimgate shimgate-gateway sgbench
SG="$BIN/shimgate"

# ---------------------------------------------------------------- hosts
DEV_IP=198.51.100.2
GW_DEV_IP=198.51.100.1
GW_INTRA_IP=203.0.113.1
INTRA_NET=203.0.113.0/24
ORIGIN_IP=203.0.113.2
# A second address of the intranet host, routed to tun2proxy's interface.
ANCHOR_IP=203.0.113.3
ORIGIN_PORT=9000
GW_PORT=8443
SOCKS=127.0.0.1:1080
VPN_RANGE=192.0.2.0/24

log "namespaces $DEV_NS, $GW_NS, $INTRA_NS"
netns_add "$DEV_NS" && netns_add "$GW_NS" && netns_add "$INTRA_NS" || exit 1
netns_veth "$DEV_NS" "$DEV_IP/24" "$GW_NS" "$GW_DEV_IP/24" sgb-gw sgb-dev || exit 1
netns_veth "$GW_NS" "$GW_INTRA_IP/24" "$INTRA_NS" "$ORIGIN_IP/24" sgb-intra sgb-gw || exit 1
ip -n "$INTRA_NS" addr add "$ANCHOR_IP/24" dev sgb-gw
# The gateway is no router: the intranet is reachable only through it.
ip netns exec "$GW_NS" sysctl -q -w net.ipv4.ip_forward=0

# Other work on the machine makes every figure noisy; say so.
# /proc/stat ticks: total, idle (+iowait), process time (user+nice+system), steal.
cpu_sample() { awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6, $2+$3+$4, $9 }' /proc/stat; }
# utime stime cutime cstime of a process, in ticks (with what it reaped).
tree_cpu_ticks() {
    local f
    f="$(<"/proc/$1/stat")" || { echo 0; return; }
    f="${f##*) }"
    # shellcheck disable=SC2086
    set -- $f
    echo $((${12} + ${13} + ${14} + ${15}))
}
read -r T0 I0 _ _ < <(cpu_sample)
sleep 1
read -r T1 I1 RUN_P0 RUN_S0 < <(cpu_sample)
RUN_T0=$T1
RUN_OWN0=$(tree_cpu_ticks $$)
BUSY=$(((100 * ((T1 - T0) - (I1 - I0))) / ((T1 - T0) > 0 ? (T1 - T0) : 1)))
NOTES=("the CPUs were ${BUSY}% busy just before the run")
((BUSY <= 20)) || NOTES=("warning: ${NOTES[0]} (other work running); figures are noisy")

# ---------------------------------------------------------------- servers
start_bg origin ip netns exec "$INTRA_NS" "$SGBENCH" origin --listen "0.0.0.0:$ORIGIN_PORT"
ORIGIN_PID=$BG_PID
ip netns exec "$INTRA_NS" "$SGBENCH" wait-port "$ORIGIN_IP:$ORIGIN_PORT" --pid "$ORIGIN_PID" --timeout-secs 10 ||
    { fail "origin did not start" origin; exit 1; }
# Not reachable from the device without the gateway.
if ip netns exec "$DEV_NS" "$SGBENCH" wait-port "$ORIGIN_IP:$ORIGIN_PORT" --timeout-secs 1 >/dev/null 2>&1; then
    fail "the origin is reachable from the device namespace without shimgate"; exit 1
fi

log "gateway in $GW_NS on $GW_DEV_IP:$GW_PORT, policy allow --to $INTRA_NET"
gateway_init_ns "$WORK/gateway" gateway gw.shimgate.test "$GW_DEV_IP" "$GW_PORT" \
    --vpn-range "$VPN_RANGE" || exit 1
# Before `serve`: the device's first route request must see the rule.
gw policy add allow --to "$INTRA_NET" >"$WORK/gateway-policy.log" 2>&1 ||
    { fail "shimgate-gateway policy add failed" gateway-policy; exit 1; }
gateway_serve_ns "$GW_NS" gateway "$GW_DEV_IP" || exit 1
CODE="$(new_code)" || exit 1
CDIR="$WORK/device"
ip netns exec "$DEV_NS" "$SG" --config-dir "$CDIR" enroll "$CODE" --name tun-bench >"$WORK/enroll.log" 2>&1 ||
    { fail "shimgate enroll failed" enroll gateway; exit 1; }

log "shimgate up --tun in $DEV_NS"
start_bg device ip netns exec "$DEV_NS" "$SG" --config-dir "$CDIR" up --tun --dns off --listen "$SOCKS"
SG_PID=$BG_PID
wait_device "$CDIR" "$SG_PID" device gateway || exit 1
for ((i = 0; ; i++)); do
    if ip -n "$DEV_NS" route show "$INTRA_NET" 2>/dev/null | grep -q 'dev shimgate0'; then break; fi
    if ((i >= 200)); then
        fail "no route to $INTRA_NET through shimgate0 within 20 s" device gateway; exit 1
    fi
    sleep 0.1
done
log "$(ip -n "$DEV_NS" route show "$INTRA_NET")"

# ---------------------------------------------------------------- paths
declare -A LABEL=(
    [tun]="TUN (shimgate0, netstack-smoltcp)"
    [socks]="SOCKS port (gateway path)"
    [tun2proxy]="tun2proxy -> SOCKS port"
)
declare -A FAIL_REASON=() SKIP_REASON=()
FAILED=()
RESULTS=()
# measure NAME TARGET_IP [sgbench measure args]: from the device namespace.
measure() {
    local name="$1" ip="$2"
    shift 2
    fg_run ip netns exec "$DEV_NS" "$SGBENCH" measure --name "$name" --label "${LABEL[$name]}" \
        --target "$ip:$ORIGIN_PORT" --bulk-bytes "$BULK_BYTES" --bulk-runs "$BULK_RUNS" \
        --setup-samples "$SETUP_SAMPLES" --cps-clients "$CPS_CLIENTS" --cps-secs "$CPS_SECS" \
        --idle-conns 0 --rss "shimgate=$SG_PID" --rss "shimgate-gateway=$GW_PID" \
        --out "$WORK/result-$name.json" "$@"
}

run_tun() {
    measure tun "$ORIGIN_IP" || { fail "measuring failed" device gateway; return 1; }
}

run_socks() {
    measure socks "$ORIGIN_IP" --socks "$SOCKS" || { fail "measuring failed" device gateway; return 1; }
}

run_tun2proxy() {
    local i t2p_pid
    INSTALL_OK=$((!SKIP_INSTALL)) find_tun2proxy
    if [[ -n "$T2P_SKIP" ]]; then
        SKIP_REASON[tun2proxy]="not measured: tun2proxy is not available ($T2P_SKIP)"
        return 0
    fi
    log "$T2P_VERSION"
    start_bg tun2proxy ip netns exec "$DEV_NS" "$T2P_BIN" --tun tun2p0 --proxy "socks5://$SOCKS" \
        --max-sessions 100000 --verbosity warn
    t2p_pid=$BG_PID
    for ((i = 0; ; i++)); do
        if ip -n "$DEV_NS" link show tun2p0 >/dev/null 2>&1; then break; fi
        if ! kill -0 "$t2p_pid" 2>/dev/null || ((i >= 100)); then
            fail "tun2proxy did not create tun2p0" tun2proxy; return 1
        fi
        sleep 0.1
    done
    # tun2proxy gives its interface 10.0.0.33/24; no address is needed, and
    # only documentation-range addresses are used here.
    ip -n "$DEV_NS" addr flush dev tun2p0
    ip -n "$DEV_NS" link set tun2p0 up
    ip -n "$DEV_NS" route add "$ANCHOR_IP/32" dev tun2p0 ||
        { fail "could not route $ANCHOR_IP into tun2p0" tun2proxy; return 1; }
    measure tun2proxy "$ANCHOR_IP" --rss "tun2proxy=$t2p_pid" ||
        { fail "measuring failed" tun2proxy device gateway; return 1; }
    stop_pids "$t2p_pid"
}

for p in $ALL_PATHS; do
    want "$p" || continue
    out="$WORK/result-$p.json"
    log "measuring ${LABEL[$p]}"
    FAIL_MSG=""
    if ! "run_$p"; then
        FAIL_REASON[$p]="${FAIL_MSG:-failed to run (see the messages above)}"
    fi
    if ! kill -0 "$SG_PID" 2>/dev/null && [[ -z "${FAIL_REASON[$p]:-}" ]]; then
        FAIL_REASON[$p]="shimgate up exited during the measurement"
        show_log device
    fi
    if [[ -n "${SKIP_REASON[$p]:-}" ]]; then
        log "${LABEL[$p]}: ${SKIP_REASON[$p]}"
        "$SGBENCH" failed --name "$p" --label "${LABEL[$p]}" --reason "${SKIP_REASON[$p]}" --out "$out"
    elif [[ -n "${FAIL_REASON[$p]:-}" ]]; then
        FAILED+=("$p")
        log "${LABEL[$p]}: ${FAIL_REASON[$p]}"
        "$SGBENCH" failed --name "$p" --label "${LABEL[$p]}" --reason "${FAIL_REASON[$p]}" --out "$out"
    fi
    RESULTS+=("$out")
done

# ---------------------------------------------------------------- report
# How much CPU did other processes take while we measured? Everything the
# machine did minus what our processes did: this script and what it reaped
# (the clients, tun2proxy), and the servers still running. (Interrupt time
# is left out: the veth and TUN work done in softirqs is ours but not
# charged to our processes.)
read -r T2 _ P2 S2 < <(cpu_sample)
OWN=$(($(tree_cpu_ticks $$) - RUN_OWN0))
for pid in "$SG_PID" "$GW_PID" "$ORIGIN_PID"; do OWN=$((OWN + $(tree_cpu_ticks "$pid"))); done
SPAN=$(((T2 - RUN_T0) > 0 ? (T2 - RUN_T0) : 1))
OTHER_PCT=$(((100 * (P2 - RUN_P0 - OWN)) / SPAN))
STEAL_PCT=$(((100 * (S2 - RUN_S0)) / SPAN))
((OTHER_PCT >= 0)) || OTHER_PCT=0
CPU_NOTE="other processes used ${OTHER_PCT}% of the CPUs during the measurements, hypervisor steal ${STEAL_PCT}%"
if ((OTHER_PCT > 10 || STEAL_PCT > 10)); then CPU_NOTE="warning: $CPU_NOTE; figures are noisy"; fi
NOTES+=("$CPU_NOTE")
# One JSON document: machine, results, targets.
jq -s --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg notes "$(printf '%s\n' "${NOTES[@]}")" \
    --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg nproc "$(nproc)" --arg kernel "$(uname -r)" '
  def cpu(r; n): (r.bulk.server_cpu // [] | map(select(.name == n)) | .[0].cpu_s_per_gb);
  def dev(r): ((r.bulk.server_cpu // []) | map(select(.name != "shimgate-gateway") | .cpu_s_per_gb)
               | if length > 0 then add else null end);
  (map({key: .name, value: .}) | from_entries) as $by
  | {date: $date, notes: ($notes | rtrimstr("\n") | split("\n")), machine: {cpu: $cpu, nproc: ($nproc | tonumber), kernel: $kernel},
     results: .,
     targets: [
       {id: "bulk", what: "TUN bulk vs SOCKS", bound: ">=", target: 0.8,
        tun: $by.tun.bulk.gbps_median, socks: $by.socks.bulk.gbps_median},
       {id: "setup_p50", what: "TUN setup p50 vs SOCKS", bound: "<=", target: 1.3,
        tun: $by.tun.setup.p50_us, socks: $by.socks.setup.p50_us}
     ] | map(. + {ratio: (if .tun != null and (.socks // 0) > 0 then .tun / .socks else null end)})
       | map(. + {verdict: (if .ratio == null then "N/A"
                 elif .bound == ">=" then (if .ratio >= .target then "PASS" else "MISS" end)
                 else (if .ratio <= .target then "PASS" else "MISS" end) end)}),
     other_ratios: {
       cps: (if $by.tun.cps.per_sec != null and ($by.socks.cps.per_sec // 0) > 0 then $by.tun.cps.per_sec / $by.socks.cps.per_sec else null end),
       device_cpu_s_per_gb: (if dev($by.tun) != null and (dev($by.socks) // 0) > 0 then dev($by.tun) / dev($by.socks) else null end),
       setup_p99: (if $by.tun.setup.p99_us != null and ($by.socks.setup.p99_us // 0) > 0 then $by.tun.setup.p99_us / $by.socks.setup.p99_us else null end)
     }}
  | .results |= map(. + {device_cpu_s_per_gb: dev(.), shimgate_cpu_s_per_gb: cpu(.; "shimgate"),
                         tun2proxy_cpu_s_per_gb: cpu(.; "tun2proxy"), gateway_cpu_s_per_gb: cpu(.; "shimgate-gateway")})
' "${RESULTS[@]}" >"$WORK/report.json"

if [[ -n "$JSON_OUT" ]]; then
    if [[ "$JSON_OUT" == - ]]; then cat "$WORK/report.json"; else cp "$WORK/report.json" "$JSON_OUT"; fi
fi
# shellcheck disable=SC2016 # jq variables, not shell ones
JQ_FMT='
  def f(x; p): if x == null then "-" else (x * p | round / p | tostring) end;
  # two decimals, always shown: 1.00, 0.50
  def f2(x): if x == null then "-" else ((x * 100 | round) as $n
    | "\($n / 100 | floor).\($n % 100 | tostring | if length < 2 then "0" + . else . end)") end;
  def us(x): if x == null then "-" elif x >= 10000 then "\(f(x / 1000; 10)) ms" else "\(f(x; 1)) us" end;
  def x(v): if v == null then "-" else "\(f2(v))x" end;'
jq -r "$JQ_FMT"'
  "\nshimgate TUN-mode benchmark, \(.date): \(.machine.nproc) CPUs, \(.machine.cpu), Linux \(.machine.kernel)",
  (.notes[] | "  \(.)"), ""' "$WORK/report.json"
jq -r "$JQ_FMT"'
  (["path", "bulk GB/s", "setup p50", "setup p99", "conn/s", "device CPU s/GB", "(shimgate", "tun2proxy)", "gateway CPU s/GB"] | @tsv),
  (.results[] | if .error then
      ([.label, "not measured (below)"] | @tsv)
    else
      ([.label, f2(.bulk.gbps_median), us(.setup.p50_us), us(.setup.p99_us), f(.cps.per_sec; 1),
        f2(.device_cpu_s_per_gb), f2(.shimgate_cpu_s_per_gb), f2(.tun2proxy_cpu_s_per_gb),
        f2(.gateway_cpu_s_per_gb)] | @tsv)
    end)' "$WORK/report.json" | column -t -s $'\t'
jq -r "$JQ_FMT"'
  (.results[] | select(.error) | "\(.label): \(.error)"),
  "\nbulk runs (GB/s): " + ([.results[] | select(.bulk) | "\(.name) \([.bulk.runs_gbps[] | f2(.)] | join(" "))"] | join("; ")),
  "\ntargets",
  (.targets[] | "  \(.what): \(if .id == "bulk" then "\(f2(.tun)) vs \(f2(.socks)) GB/s" else "\(us(.tun)) vs \(us(.socks))" end) = \(x(.ratio)) (target \(.bound) \(.target)x)  \(.verdict)"),
  "other ratios TUN/SOCKS: setup p99 \(x(.other_ratios.setup_p99)), conn/s \(x(.other_ratios.cps)), device CPU s/GB \(x(.other_ratios.device_cpu_s_per_gb))"' "$WORK/report.json"

if ((${#FAILED[@]})); then
    log "failed to run: ${FAILED[*]}"
    exit 1
fi
