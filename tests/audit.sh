#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database with cargo audit
# (installed from crates.io if missing). Part of `bash tests/run.sh`.
#
#   bash tests/audit.sh
#
# cargo audit fetches the database from GitHub. Where GitHub cannot be
# reached (as on the development machines this project is built on), this
# prints SKIPPED with the reason and exits 0: the check cannot be made there,
# and saying so beats a red build that no change can turn green.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DB=https://github.com/rustsec/advisory-db
if ! why=$(timeout 30 git ls-remote "$DB" HEAD 2>&1 >/dev/null); then
	echo "advisories: SKIPPED: the RustSec advisory database ($DB) cannot be fetched from here: ${why:-timed out}" >&2
	exit 0
fi
command -v cargo-audit >/dev/null || cargo install cargo-audit --locked
# A known vulnerability fails the check; "unmaintained" and "yanked" are shown as warnings.
cargo audit
