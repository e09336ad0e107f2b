#!/usr/bin/env bash
# Installs the system packages Hawking's build, tests, demo and benchmarks use, when missing.
# Safe to run repeatedly: it only calls apt-get when a command or library is absent.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have_cmd softflowd || need+=(softflowd)
have_cmd nfcapd || need+=(nfdump)
have_cmd tshark || need+=(tshark)
have_cmd psql || need+=(postgresql-client)
have_cmd conntrack || need+=(conntrack)
have_cmd iptables || need+=(iptables)
have_cmd tcpdump || need+=(tcpdump)
have_cmd ip || need+=(iproute2)
have_cmd pkg-config || need+=(pkg-config)
have_cmd curl || need+=(curl)
[ -e /usr/include/pcap.h ] || need+=(libpcap-dev)

# Python peers for the PostgreSQL-wire and Kafka tests and the query benchmark (pip is a no-op
# when present).
if ! python3 -c "import psycopg, asyncpg, duckdb, confluent_kafka, grpc_tools" >/dev/null 2>&1; then
  python3 -m pip install -q -r "$(dirname "$0")/requirements.txt" >&2
fi

# tansu, a Kafka-compatible broker, for the Kafka tests: built once (about 9 minutes on 2
# cores), then found in ~/.cargo/bin.
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "installing tansu (cargo install, once)" >&2
  cargo install tansu --locked --features dynostore >&2
fi

# Garage, an S3-compatible object store, for the tests that keep the store in a bucket: built
# once (about 13 minutes on 2 cores), then found in ~/.cargo/bin.
if ! command -v garage >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  echo "installing garage (cargo install, once)" >&2
  cargo install garage --locked >&2
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
