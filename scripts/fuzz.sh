#!/usr/bin/env bash
# Bounded fuzz run of every host fuzz target (see host/fuzz/README.md).
#   scripts/fuzz.sh [seconds-per-target]     (default 30)
# Exits non-zero if any target found a crash (saved under host/fuzz/artifacts/).
set -euo pipefail
cd "$(dirname "$0")/../host/fuzz"
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
failed=0
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    # Seed with the saved regressions so known edge cases are always covered.
    cp -n regressions/"$target"/* "corpus/$target/" 2>/dev/null || true
    log="$(mktemp)"
    if cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
        echo "$target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "$log" | tail -1)"
    else
        failed=1
        echo "$target: FOUND A CRASH"
        tail -40 "$log"
    fi
    rm -f "$log"
done
exit "$failed"
