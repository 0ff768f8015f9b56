#!/usr/bin/env bash
# Runs the whole test suite, as CI does (`.ci/run` calls this):
#
#   bash tests/run.sh
#
# 1. installs what is missing (curl, iproute2, ...; apt-get, as root)
# 2. Postgres: $DATABASE_URL if set, else 127.0.0.1:5432 if it answers, else a
#    throwaway cluster (stopped and deleted at exit); exports DATABASE_URL
# 3. cargo fmt --check, cargo clippy -D warnings, cargo build (all targets),
#    a fuzz smoke run (tests/fuzz/smoke.sh), cargo audit of Cargo.lock and
#    tests/fuzz/Cargo.lock (tests/audit.sh: a fresh RustSec database if
#    GitHub answers, else the snapshot in ../shared/advisory-db; a known
#    vulnerability fails the run)
# 4. the tests: cargo nextest (if installed) or cargo test, whole workspace,
#    including the end-to-end suite tests/e2e (real processes, network
#    namespaces: run as root, or set SHIMGATE_SKIP_NETNS=1 to skip those)
# 5. compose-docker: docker-compose.yml and the Dockerfile in a real, private Docker
#    engine (tests/docker/compose.sh: up --build, the README's checks, down -v; root
#    only; its image and build cache stay in /var/cache/shimgate-docker between runs;
#    SHIMGATE_SKIP_DOCKER=1 skips it, and says so)
#
# Prints each phase's time at the end, then the test runner's summary again.
# Exits non-zero if any step fails. Extra arguments go to the test runner
# (e.g. `bash tests/run.sh -E 'test(revoke)'` with nextest).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export SG_T0=$(date +%s)
# shellcheck source=tests/lib/setup.sh
source "$ROOT/tests/lib/setup.sh"

trap sg_stop_postgres EXIT
trap 'exit 130' INT TERM

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
if [ "${CI:-}" = true ]; then
	# a fresh clone builds once: incremental artifacts only cost time
	export CARGO_INCREMENTAL=0
fi

if [ "$(id -u)" != 0 ] && [ "${SHIMGATE_SKIP_NETNS:-}" != 1 ]; then
	sg_log "WARNING: not root: the network-namespace tests will FAIL (set SHIMGATE_SKIP_NETNS=1 to skip them)"
fi

sg_ensure_tools
sg_ensure_postgres

failed=()
times=("setup $(($(date +%s) - SG_T0))s")
phase() {
	local name=$1
	shift
	local t=$(date +%s)
	sg_log "== $name: $*"
	if "$@"; then
		sg_log "== $name: ok ($(($(date +%s) - t))s)"
		times+=("$name $(($(date +%s) - t))s")
	else
		sg_log "== $name: FAILED ($(($(date +%s) - t))s)"
		times+=("$name $(($(date +%s) - t))s FAILED")
		failed+=("$name")
		return 1
	fi
}
# Each phase's time, then the test runner's summary again, so that it stays
# the last line printed.
summary() {
	sg_log "== phase times: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); total $(($(date +%s) - SG_T0))s"
	[ -s "${tests_log:-}" ] && grep -E '^[[:space:]]*Summary \[|^test result:' "$tests_log" | tail -n 1 >&2
	return 0
}

phase fmt cargo fmt --all -- --check || true
phase clippy cargo clippy --workspace --all-targets -- -D warnings || true
phase build cargo build --workspace --all-targets || {
	sg_log "FAILED: ${failed[*]} (the build failed: no tests run)"
	exit 1
}

# cargo fuzz targets, a few seconds each (tests/fuzz/smoke.sh: installs cargo-fuzz if missing)
phase fuzz bash "$ROOT/tests/fuzz/smoke.sh" || true
# known advisories in dependencies (cargo audit; fresh database, else ../shared/advisory-db; never skipped)
phase advisories bash "$ROOT/tests/audit.sh" || true

if cargo nextest --version >/dev/null 2>&1; then
	# nextest does not run doctests
	phase doctests cargo test --workspace --doc || true
	sg_log "tests: cargo nextest (config tests/lib/nextest.toml, profile ci); failed so far: ${failed[*]:-none}"
	runner=(cargo nextest run --workspace --config-file "$ROOT/tests/lib/nextest.toml" --profile ci "$@")
else
	sg_log "tests: cargo test (cargo-nextest not installed); failed so far: ${failed[*]:-none}"
	runner=(cargo test --workspace --no-fail-fast "$@" -- --test-threads=3)
fi
tests_log=$(mktemp)
trap 'rm -f "$tests_log"; sg_stop_postgres' EXIT
run_tests() { "${runner[@]}" 2>&1 | tee "$tests_log"; }
phase tests run_tests || true
if [ "${SHIMGATE_SKIP_DOCKER:-}" = 1 ]; then
	sg_log "WARNING: SHIMGATE_SKIP_DOCKER=1: docker-compose.yml NOT run in a Docker engine"
else
	phase compose-docker bash "$ROOT/tests/docker/compose.sh" || true
fi
if [ ${#failed[@]} -gt 0 ]; then
	sg_log "FAILED: ${failed[*]}"
	summary
	exit 1
fi
summary
