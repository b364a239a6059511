#!/usr/bin/env bash
# Experiment, not part of CI: what resetting only a request's dirty pages would buy.
#
#   scripts/wasmtime50-experiment.sh [seconds per HTTP run, default 5]      (needs wrk)
#
# pycage pins wasmtime 46, whose pool resets a slot by copying the whole CPython
# heap back (README, "Performance"). wasmtime 50.0.1 can reset only dirty pages
# safely, but needs rustc >= 1.97, so this script ports a copy of HEAD to it in a
# scratch worktree and builds that with the `nightly` toolchain (TOOLCHAIN=... for
# another). It measures, alternating, two rounds each:
#
#   main      HEAD as it is (wasmtime 46, pagemap_scan off)
#   upstream  the port, wasmtime 50.0.1 as published, pagemap_scan on. On Linux
#             6.18 a page nobody touched reports "written", so its scan copies
#             every untouched page of the heap as well.
#   present   the same with one line added to wasmtime's scan: a page must be
#             present or swapped out (`category_anyof_mask`). Untouched pages
#             are then skipped; swapped-out dirty pages are still reset.
#
# Everything goes under target/wasmtime50, or $PYCAGE_EXPERIMENT_DIR (a full nightly
# build: ~20 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
toolchain="${TOOLCHAIN:-nightly}"
root="$PWD"
work="${PYCAGE_EXPERIMENT_DIR:-$root/target/wasmtime50}"
src="$work/src"
out="$work/bin"
export CARGO_TARGET_DIR="$work/target"
mkdir -p "$work" "$out"

# replace FILE OLD NEW: a literal replacement that must match exactly once.
replace() {
    python3 - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: expected one {old!r}; the port in this script needs updating")
open(path, "w").write(text.replace(old, new))
EOF
}

# The port: the version and API changes. (Since host/src/instance/memory
# replaced wasmtime's memory reset, the pagemap_scan option is not used.)
git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
git worktree prune
git worktree add --quiet --detach "$src" HEAD
replace "$src/host/Cargo.toml" 'wasmtime = { version = "=46.0.3"' 'wasmtime = { version = "=50.0.1"'
replace "$src/host/Cargo.toml" 'wasmtime-wasi = { version = "=46.0.3"' 'wasmtime-wasi = { version = "=50.0.1"'
replace "$src/host/src/contract/mod.rs" '"46.0.3"' '"50.0.1"'
python3 - "$src/host/src/capabilities/files.rs" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = text.replace("DirPerms, FilePerms,", "FsPerms,")
text, n = re.subn(r"DirPerms::READ,\s*FilePerms::READ", "FsPerms::ReadOnly", text)
if n == 0:
    sys.exit(f"{path}: no preopens found; the port in this script needs updating")
open(path, "w").write(text)
EOF

build() { # build VARIANT [cargo args...]
    local variant="$1"
    shift
    (cd "$src" && cargo "+$toolchain" build --quiet --release --bin pycage --example bench "$@")
    mkdir -p "$out/$variant"
    cp "$CARGO_TARGET_DIR/release/pycage" "$CARGO_TARGET_DIR/release/examples/bench" "$out/$variant/"
}
build upstream

upstream_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-50.0.1 | head -1)
patched="$work/wasmtime-50.0.1-present"
rm -rf "$patched"
cp -r "$upstream_src" "$patched"
anchor='.category_mask(Categories::WRITTEN | Categories::PFNZERO | Categories::FILE)'
replace "$patched/src/runtime/vm/sys/unix/pagemap.rs" "$anchor" \
    "$anchor.category_anyof_mask(Categories::PRESENT | Categories::SWAPPED)"
build present --config "patch.crates-io.wasmtime.path=\"$patched\""

# HEAD itself, with the stable toolchain, in its usual target directory.
(unset CARGO_TARGET_DIR && cargo build --quiet --release --bin pycage --example bench)
mkdir -p "$out/main"
cp target/release/pycage target/release/examples/bench "$out/main/"

for round in 1 2; do
    for variant in main upstream present; do
        echo "== $variant, round $round"
        "$out/$variant/bench" "$out/$variant/pycage" "$out/$variant/quick-$round.json" 2000 --quick |
            grep -E 'instantiate|dispatch|teardown|default|overhead|RSS'
        PYCAGE="$out/$variant/pycage" scripts/bench-serve.sh "$seconds" | grep -E '^(hello|json)'
    done
done
