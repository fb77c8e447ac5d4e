#!/usr/bin/env bash
# Build moonlensd for aarch64-unknown-linux-gnu (Jetson-class boards) on a Debian machine.
# Uses Debian's Rust (rustc-web) and its arm64 standard library, because rustup cannot fetch
# targets here; only the daemon and its dependencies are compiled (--no-default-features
# leaves the host-only feature out). MOONLENS_FEATURES=mqtt builds the MQTT publisher in
# (`--mqtt`), MOONLENS_FEATURES=fleet the fleet database push (`--fleet-db`); both:
# MOONLENS_FEATURES=mqtt,fleet (board/README.md). Output: target/aarch64-unknown-linux-gnu/release/moonlensd
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      qemu-user-static libclang-dev clang)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# bindgen (v4l2 headers) must parse the target's headers, not the host's
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--target=aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"
cd "$root"
RUSTC=/usr/bin/rustc /usr/bin/cargo build --release --locked --target aarch64-unknown-linux-gnu \
  --no-default-features ${MOONLENS_FEATURES:+--features "$MOONLENS_FEATURES"} --bin moonlensd
bin=target/aarch64-unknown-linux-gnu/release/moonlensd
aarch64-linux-gnu-strip -o "$bin.stripped" "$bin"
echo "built $bin ($(stat -c %s "$bin.stripped") bytes stripped)"
