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
