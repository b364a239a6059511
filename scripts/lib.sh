# Shared by the scripts: sourced, not run.

# Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config).
target_dir() {
    cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# Build in release mode (cargo build arguments: "$@") and print the directory
# the binaries are in.
release_dir() {
    cargo build --release --quiet "$@" >&2 || return
    echo "$(target_dir)/release"
}

# wait_for_http PORT PID [SECONDS]: until something answers HTTP on
# 127.0.0.1:PORT (true), or process PID exits or SECONDS (default 120)
# pass (false, with a message).
wait_for_http() {
    local port="$1" pid="$2" seconds="${3:-120}"
    for _ in $(seq $(( seconds * 10 ))); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "the server (pid $pid) exited" >&2; return 1; }
        sleep 0.1
    done
    echo "nothing listened on 127.0.0.1:$port within ${seconds}s" >&2; return 1
}
