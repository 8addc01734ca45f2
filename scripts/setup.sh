#!/usr/bin/env bash
# Installs what building and testing junction needs, once: libclang (RocksDB's
# bindings), OpenSSL (TLS and SASL/SCRAM in librdkafka; the CLI makes the
# secure tests' certificate), Prometheus and promtool (the observability tests), and the Nisshi broker (into the cache directory, ~15 minutes the
# first time). Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_apt=()
for pkg in libclang-dev build-essential pkg-config curl prometheus libssl-dev openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# cargo install records what it installed in the root's .crates.toml.
if [ ! -x "$JUNCTION_NISSHI" ] || ! grep -q "^\"nisshi $NISSHI_VERSION " "$JUNCTION_CACHE/tools/.crates.toml" 2>/dev/null; then
    echo "setup: installing the Nisshi broker $NISSHI_VERSION into $JUNCTION_CACHE/tools (about 15 minutes, once)"
    # Nisshi's own target dir, so that it never evicts junction's build cache.
    CARGO_TARGET_DIR="$JUNCTION_CACHE/nisshi-target" \
        cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version --root "$JUNCTION_CACHE/tools"
fi
echo "setup: ready (broker: $JUNCTION_NISSHI, builds: $CARGO_TARGET_DIR)"
