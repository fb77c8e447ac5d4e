#!/usr/bin/env bash
# Host build prerequisites (Debian/Ubuntu): bindgen needs libclang to read the V4L2 headers
# for the `v4l` crate. Idempotent and quick when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
# fonts-wqy-microhei: the CJK font of the contact sheets and curves (host::font)
# mosquitto: the MQTT broker tests/mqtt.rs starts on loopback
for p in libclang-dev clang fonts-wqy-microhei mosquitto; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# pip fetches the PostgreSQL + pgvector wheel below (a fresh Debian has python3 without it)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
# PostgreSQL 16 with pgvector for tests/fleet.rs: PyPI's pgserver wheel bundles both, built
# (Debian 12 has no pgvector package); only its server binaries are used, no Python.
pg=target/pgserver
if [ ! -x "$pg/pgserver/pginstall/bin/postgres" ]; then
  mkdir -p "$pg"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform "manylinux_2_17_$(uname -m)" -d "$pg" pgserver==0.1.4
  python3 -m zipfile -e "$pg"/pgserver-0.1.4-*.whl "$pg"
  chmod +x "$pg"/pgserver/pginstall/bin/*
fi
# the server refuses to run as root: tests run it as this user when they are root
if [ "$(id -u)" -eq 0 ] && ! id moonlens-pg >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin moonlens-pg
fi
