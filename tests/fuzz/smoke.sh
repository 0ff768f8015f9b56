#!/usr/bin/env bash
# Fuzz smoke run, part of `bash tests/run.sh` (phase `fuzz`): builds every
# cargo-fuzz target in tests/fuzz and runs each for a few seconds, starting
# from its committed seed corpus. Catches a target that no longer builds,
# and crashes a few seconds of fuzzing find. The long runs are in
# docs/SECURITY.md "Fuzzing".
#
#   bash tests/fuzz/smoke.sh              # every target, 5 s each
#   FUZZ_SECONDS=600 bash tests/fuzz/smoke.sh socks5 pac_head
#
# The machine has only stable Rust: cargo fuzz's -Zsanitizer and coverage
# flags are accepted there with RUSTC_BOOTSTRAP=1, set for this script's
# cargo calls only. cargo-fuzz is installed (into ~/.cargo/bin) if missing;
# if it cannot be, this fails: a smoke run that silently skips proves
# nothing. A crash leaves its input in tests/fuzz/artifacts/<target>/ and
# fails the run.
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$FUZZ/../.." && pwd)"
SECONDS_EACH=${FUZZ_SECONDS:-5}
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { echo "[fuzz] $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
	log "cargo-fuzz is not installed: cargo install cargo-fuzz --locked"
	if ! cargo install cargo-fuzz --locked; then
		log "FAILED: cargo-fuzz could not be installed (crates.io unreachable?); no fuzz targets ran"
		exit 1
	fi
fi
log "$(cargo fuzz --version)"

cd "$ROOT"
# AddressSanitizer (cargo fuzz's default): with it libFuzzer also reports leaks.
log "building the targets (first build: several minutes)"
cargo fuzz build --fuzz-dir tests/fuzz

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo fuzz list --fuzz-dir tests/fuzz)
fi
[ ${#targets[@]} -gt 0 ] || { log "FAILED: no fuzz targets found"; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
	seeds="$FUZZ/corpus/$t"
	[ -d "$seeds" ] || { log "FAILED: $t has no seed corpus in $seeds"; failed+=("$t"); continue; }
	# New inputs go to the scratch directory (the first one given), so the
	# committed corpus only changes when someone means it to.
	mkdir -p "$scratch/$t"
	log "$t: ${SECONDS_EACH}s"
	if cargo fuzz run --fuzz-dir tests/fuzz "$t" "$scratch/$t" "$seeds" -- \
		-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		>"$scratch/$t.log" 2>&1; then
		grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log" >&2 || true
	else
		tail -n 60 "$scratch/$t.log" >&2
		log "FAILED: $t (the input is in tests/fuzz/artifacts/$t/)"
		failed+=("$t")
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	log "FAILED: ${failed[*]}"
	exit 1
fi
log "ok: ${targets[*]}"
