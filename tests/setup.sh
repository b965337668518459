#!/usr/bin/env bash
# Installs what the build and the tests use and the machine lacks: OpenSSL's headers and
# pkg-config (librdkafka's TLS), kcat, prometheus (the server and promtool), util-linux's logger
# and logrotate (Debian), the Python Kafka clients and their codecs and graypy, a GELF client
# (PyPI), and cargo-nextest. Quick when everything is there.
set -euo pipefail

missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v openssl >/dev/null || missing+=(openssl)
command -v kcat >/dev/null || missing+=(kcat)
command -v promtool >/dev/null || missing+=(prometheus)
command -v logger >/dev/null || missing+=(bsdutils)
command -v logrotate >/dev/null || missing+=(logrotate)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import confluent_kafka, kafka, lz4, zstandard, snappy, graypy' 2>/dev/null ||
  pip install -q confluent-kafka kafka-python lz4 zstandard python-snappy graypy
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
