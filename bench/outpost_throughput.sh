#!/bin/bash
# End-to-end throughput of Postfix + Outpost, next to Postfix alone and a
# do-nothing pymilter, in one interleaved run (python -m bench.throughput):
#   outpost-bare    mapping, domain policy, headers (spam engine off, no limits)
#   outpost-limits  the same + per-identity and per-user rate limits (sqlite store)
#   outpost-full    the same + the built-in spam engine (Bayes + rules)
# Usage: bench/outpost_throughput.sh [throughput.py options, e.g. --messages 1000 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
W="$(mktemp -d /tmp/outpost-bench-XXXXXX)"
chmod 755 "$W"
trap 'rm -rf "$W"' EXIT
"$PY" -m outpost secret "$W/secret" >/dev/null
common() {
    cat <<YAML
secret_file: $W/secret
store: sqlite:///$W/$1.db
report_abuse_to: abuse@example.net
reports: {enabled: false}
domains: [example.com]
users:
  - {name: bench, type: ip, ips: [127.0.0.0/8], domains: [example.com], connection_limit: 1000}
YAML
}
{ common bare; echo "spam: {enabled: false}"; } > "$W/bare.yaml"
{ common limits; echo "spam: {enabled: false}"
  echo 'defaults: {limits: {messages: ["1000000/1m", "10000000/1h"], recipients: ["10000000/1d"]}, user_limits: {messages: ["100000000/1d"]}}'; } > "$W/limits.yaml"
# smtp-source's repetitive filler text scores as spam: the engine still runs on
# every message, but the bench accepts whatever it decides.
{ common full
  echo 'defaults: {spam: {on_spam: accept}, limits: {messages: ["1000000/1m", "10000000/1h"], recipients: ["10000000/1d"]}, user_limits: {messages: ["100000000/1d"]}}'; } > "$W/full.yaml"
exec "$PY" -m bench.throughput \
    --milter "outpost-bare=$PY -m outpost run -c $W/bare.yaml --socket {socket}" \
    --milter "outpost-limits=$PY -m outpost run -c $W/limits.yaml --socket {socket}" \
    --milter "outpost-full=$PY -m outpost run -c $W/full.yaml --socket {socket}" \
    --sender bench@example.com "$@"
