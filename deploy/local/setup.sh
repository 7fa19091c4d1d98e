#!/usr/bin/env bash
# Set up this machine for dlaas: system packages, broker plugins, the Python workspace.
# Idempotent: a second run only checks. Needs root (apt, rabbitmq-plugins) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(memcached xrootd-server xrootd-server-plugins xrootd-client xrootd-fuse fuse3 chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The machine's services (started before a session; start them if they stopped).
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "setup: starting RabbitMQ"; rabbitmq-server -detached
  for _ in $(seq 60); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
# hermes speaks STOMP; the tests use the management API for throwaway vhosts and users
enabled=$(rabbitmq-plugins list -e -m 2>/dev/null || true)
for plugin in rabbitmq_stomp rabbitmq_management; do
  grep -qx "$plugin" <<<"$enabled" || rabbitmq-plugins enable "$plugin" >/dev/null
done
for _ in $(seq 60); do
  (exec 3<>/dev/tcp/127.0.0.1/61613) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && break
  sleep 1
done

# Under CI, vhosts left by earlier test runs that were killed (each holds dozens of quorum
# queues that slow the broker down) are removed first.
if [ -n "${CI:-}" ]; then
  curl -s -m 60 -u guest:guest http://127.0.0.1:15672/api/vhosts | python3 -c \
    'import json,sys; print("\n".join(v["name"] for v in json.load(sys.stdin) if v["name"].startswith(("dlaas-test-","dlaas-ops","dlaas-bench-"))))' |
    while read -r vhost; do curl -s -m 300 -u guest:guest -X DELETE "http://127.0.0.1:15672/api/vhosts/$vhost" >/dev/null || true; done
fi
command -v uv >/dev/null || python3 -m pip install -q uv
# the AsyncAPI 3.0 JSON schema, to validate docs/asyncapi.yaml offline
npm ls -g @asyncapi/specs >/dev/null 2>&1 || npm install -g -s @asyncapi/specs@6.11.1 >/dev/null
uv sync --all-packages --frozen -q
echo "setup: ready ($(.venv/bin/python --version), uv $(uv --version | cut -d' ' -f2))"
