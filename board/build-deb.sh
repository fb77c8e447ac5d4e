#!/usr/bin/env bash
# Package the arm64 daemon as a Debian package with cargo-deb (installed into ~/.cargo/bin
# when missing). Builds the binary first through board/build-aarch64.sh.
# Output: target/aarch64-unknown-linux-gnu/debian/moonlensd_<version>-1_arm64.deb
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/board/build-aarch64.sh"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
# --no-build: the binary is the one build-aarch64.sh made with Debian's cross toolchain.
cargo deb --no-build --target aarch64-unknown-linux-gnu \
  --deb-version "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1" "$@"
deb=$(ls -t target/aarch64-unknown-linux-gnu/debian/*.deb | head -1)
echo "built $deb"
dpkg-deb --info "$deb" | sed -n '1,20p'
dpkg-deb --contents "$deb"
