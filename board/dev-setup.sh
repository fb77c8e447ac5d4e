#!/usr/bin/env bash
# Host build prerequisites (Debian/Ubuntu): bindgen needs libclang to read the V4L2 headers
# for the `v4l` crate. Idempotent and quick when everything is present.
set -euo pipefail
missing=()
# fonts-wqy-microhei: the CJK font of the contact sheets and curves (host::font)
# mosquitto: the MQTT broker tests/mqtt.rs starts on loopback
for p in libclang-dev clang fonts-wqy-microhei mosquitto; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
