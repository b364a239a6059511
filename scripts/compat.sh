#!/usr/bin/env bash
# pycage's compatibility suite: build fixtures/compat (popular PyPI packages)
# with a pycage binary, then run one request per package, each importing the
# package and using it for real inside the sandbox. Prints
#   PASS name version | FAIL name version: error
# then `pass rate: X/Y (Z%)`, and exits 0: it is a report, not a gate (it
# exits non-zero only when there is no report: no binary, or no build).
# Packages that cannot be installed at all (native code only) are listed in
# the fixture's app.py and count as failures with their recorded reason;
# COMPAT_RECHECK=1 builds each of them alone again (slow) to see if that changed.
#
#   PYCAGE_BIN=path/to/pycage scripts/compat.sh     (default target/release/pycage)
#   COMPAT_TIMEOUT=60s COMPAT_BUILD_TIMEOUT=30m     (per request, for the build)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PYCAGE_BIN:-$root/target/release/pycage}
fixture=$root/fixtures/compat
[ -x "$bin" ] || { echo "compat.sh: no pycage binary at $bin (cargo build --release, or set PYCAGE_BIN)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

started=$SECONDS
"$bin" build --build-timeout "${COMPAT_BUILD_TIMEOUT:-30m}" "$fixture" >&2 ||
    { echo "compat.sh: building $fixture failed" >&2; exit 1; }
echo "compat.sh: build took $((SECONDS - started))s" >&2

run() { "$bin" run -q --timeout "${COMPAT_TIMEOUT:-60s}" "$fixture" --path "$1" 2>"$scratch/stderr"; }

pass=0 total=0
started=$SECONDS
for name in $(run /list); do
    line=$(run "/line/$name")
    case $line in
        "PASS $name "* | "FAIL $name "*) ;;
        *) # no answer from the check itself: the instance trapped, timed out or ran out of memory
            why=$(grep -v '^\[guest' "$scratch/stderr" | grep . | tail -n 1)
            line="FAIL $name ?: ${why:-${line:-no response}}" ;;
    esac
    echo "$line"
    total=$((total + 1))
    [[ $line == PASS* ]] && pass=$((pass + 1))
done
echo "compat.sh: requests took $((SECONDS - started))s" >&2

while IFS=$'\t' read -r name_version why; do
    name=${name_version% *} version=${name_version#* }
    if [ "${COMPAT_RECHECK:-0}" = 1 ]; then
        one=$scratch/$name
        mkdir -p "$one"
        printf 'from pycage import route\n\n@route("/")\ndef ok():\n    return "ok"\n' >"$one/app.py"
        printf '[project]\nname = "one"\nversion = "0"\ndependencies = ["%s==%s"]\n' "$name" "$version" >"$one/pyproject.toml"
        if "$bin" build -q --build-timeout "${COMPAT_BUILD_TIMEOUT:-30m}" "$one" >/dev/null 2>"$scratch/stderr"; then
            why="it installs now: move it into fixtures/compat (pyproject.toml, and a check)"
        else # the error's first line, less the path; if it ends in ':', the last error line after it
            why=$(head -n 1 "$scratch/stderr" | sed -e 's/^pycage: error: [^:]*: //' -e 's/ *| */ /g' \
                -e "s/; its wheels are native (.*) and cannot run in the sandbox's WebAssembly CPython,/,/" -e 's/ *$//')
            [[ $why == *: ]] && why="$why $(grep -E '(Error|ERROR|Exception|Invalid[A-Za-z]*|Exit):' "$scratch/stderr" | tail -n 1 | sed 's/^ *| *//')"
        fi
    fi
    echo "FAIL $name $version: not installable: $why"
    total=$((total + 1))
done < <(run /not-installable)

echo "pass rate: $pass/$total ($((total ? 100 * pass / total : 0))%)"
exit 0
