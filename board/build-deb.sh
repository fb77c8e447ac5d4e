#!/usr/bin/env bash
# Package the arm64 daemon as a Debian package with cargo-deb (installed into ~/.cargo/bin
# when missing). Builds the binary first through board/build-aarch64.sh.
# Output: target/aarch64-unknown-linux-gnu/debian/moonlensd_<version>-1_arm64.deb
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/board/build-aarch64.sh"
# moonlensd's completions and man page, generated from its command definition by the host
# tool (the same definitions the arm64 binary was built from)
cargo build --release --locked --bin moonlens-host
target/release/moonlens-host completions --out target/share >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
# --no-build: the binary is the one build-aarch64.sh made with Debian's cross toolchain.
cargo deb --no-build --target aarch64-unknown-linux-gnu \
  --deb-version "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1" "$@"
deb=$(ls -t target/aarch64-unknown-linux-gnu/debian/*.deb | head -1)
echo "built $deb ($(stat -c %s "$deb") bytes)"
dpkg-deb --info "$deb" | sed -n '1,20p'
# check what went in: the package's bundle is the committed one, its binary is for arm64
x=$(mktemp -d)
trap 'rm -rf "$x"' EXIT
dpkg-deb -x "$deb" "$x"
[ "$(dpkg-deb --field "$deb" Architecture)" = arm64 ]
for f in models/default/*; do cmp "$f" "$x/opt/moonlens/models/default/$(basename "$f")"; done
file "$x/opt/moonlens/bin/moonlensd" | grep -q "ARM aarch64" || { echo "packaged binary is not aarch64" >&2; exit 1; }
for f in etc/moonlens/moonlensd.toml lib/systemd/system/moonlensd.service lib/udev/rules.d/99-moonlens.rules \
         usr/share/man/man1/moonlensd.1.gz usr/share/bash-completion/completions/moonlensd \
         usr/share/zsh/vendor-completions/_moonlensd usr/share/fish/vendor_completions.d/moonlensd.fish \
         opt/moonlens/share/moonlensd-mqtt.conf; do
  [ -f "$x/$f" ] || { echo "package lacks /$f" >&2; exit 1; }
done
echo "package contents check: ok"
