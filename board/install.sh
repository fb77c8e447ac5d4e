#!/usr/bin/env bash
# Install moonlensd on the board (run as root on the board, from an unpacked release tree or
# the repository after board/build-aarch64.sh): binary, default bundle, config, udev rule,
# systemd unit, and the dedicated user.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bin=${MOONLENSD_BIN:-$src/target/aarch64-unknown-linux-gnu/release/moonlensd}
[ -x "$bin" ] || bin=$src/bin/moonlensd
[ -x "$bin" ] || { echo "no moonlensd binary: run board/build-aarch64.sh first" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
id moonlens >/dev/null 2>&1 || useradd --system --home /var/lib/moonlens --shell /usr/sbin/nologin \
  --groups video,dialout moonlens
install -d -m 0755 /opt/moonlens/bin /opt/moonlens/models/default /etc/moonlens
install -m 0755 "$bin" /opt/moonlens/bin/moonlensd
install -m 0644 "$src"/models/default/* /opt/moonlens/models/default/
install -m 0644 "$src/README.md" /opt/moonlens/README.md
[ -f /etc/moonlens/moonlensd.toml ] || install -m 0644 "$src/board/moonlensd.toml" /etc/moonlens/moonlensd.toml
install -m 0644 "$src/board/99-moonlens.rules" /etc/udev/rules.d/99-moonlens.rules
install -m 0644 "$src/board/moonlensd.service" /etc/systemd/system/moonlensd.service
udevadm control --reload && udevadm trigger || true
systemctl daemon-reload
systemctl enable --now moonlensd
echo "installed; query with: sudo -u moonlens /opt/moonlens/bin/moonlensd query --socket /run/moonlens/moonlens.sock a rabbit"
