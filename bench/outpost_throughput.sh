#!/bin/bash
# End-to-end throughput of Postfix + Outpost, next to Postfix alone and a
# do-nothing pymilter, in one interleaved run (python -m bench.throughput):
#   outpost-bare    mapping, domain policy, headers (spam engine off, no limits)
#   outpost-limits  the same + per-identity and per-user rate limits (sqlite store)
#   outpost-full    the same + the built-in spam engine (Bayes + rules)
# (the configurations: bench/outpost_configs.sh)
# Usage: bench/outpost_throughput.sh [throughput.py options, e.g. --messages 1000 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/outpost_configs.sh
PY="${PYTHON:-.venv/bin/python}"
W="$(mktemp -d /tmp/outpost-bench-XXXXXX)"
chmod 755 "$W"
trap 'rm -rf "$W"' EXIT
"$PY" -m outpost secret "$W/secret" >/dev/null
for kind in bare limits full; do
    outpost_config "$kind" "$W/secret" "$W/$kind.db" > "$W/$kind.yaml"
done
exec "$PY" -m bench.throughput \
    --milter "outpost-bare=$PY -m outpost run -c $W/bare.yaml --socket {socket}" \
    --milter "outpost-limits=$PY -m outpost run -c $W/limits.yaml --socket {socket}" \
    --milter "outpost-full=$PY -m outpost run -c $W/full.yaml --socket {socket}" \
    --sender bench@example.com "$@"
