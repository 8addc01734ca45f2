# Sourced by the other scripts: where builds and tools are cached, outside the repo.
JUNCTION_CACHE="${JUNCTION_CACHE:-$HOME/.cache/junction}"
mkdir -p "$JUNCTION_CACHE/tools" "$JUNCTION_CACHE/target"
export JUNCTION_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$JUNCTION_CACHE/target}"
export JUNCTION_NISSHI="${JUNCTION_NISSHI:-$JUNCTION_CACHE/tools/bin/nisshi}"
NISSHI_VERSION=0.8.1
