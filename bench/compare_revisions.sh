#!/bin/bash
# Same-run throughput of Postfix + Outpost at several git revisions (the
# "limits" configuration of bench/outpost_throughput.sh: sqlite store, rate
# limits, connection slots; spam engine off), to hold a speed trick to the
# bar of docs/benchmarks.rst.  Each revision runs from its own `git archive`
# with this checkout's venv; rounds interleave them.  Prints throughput.py's
# table, then for each revision the median and quartiles of its same-round
# ratios to the first one (messages/s and milter CPU per message).
# Usage: bench/compare_revisions.sh REV REV [...] -- [throughput.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$PWD/.venv/bin/python}"
revs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do revs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#revs[@]} -ge 2 ] || { echo "usage: $0 REV REV [...] -- [throughput.py options]" >&2; exit 2; }
W="$(mktemp -d /tmp/outpost-compare-XXXXXX)"
chmod 755 "$W"
trap 'rm -rf "$W"' EXIT
PYTHONPATH=milter "$PY" -m outpost secret "$W/secret" >/dev/null
args=()
for i in "${!revs[@]}"; do
    name="r$i-$(git rev-parse --short "${revs[$i]}")"
    mkdir -p "$W/$name"
    git archive "${revs[$i]}" milter | tar -x -C "$W/$name"
    cat > "$W/$name.yaml" <<YAML
secret_file: $W/secret
store: sqlite:///$W/$name.db
report_abuse_to: abuse@example.net
reports: {enabled: false}
domains: [example.com]
users:
  - {name: bench, type: ip, ips: [127.0.0.0/8], domains: [example.com], connection_limit: 1000}
spam: {enabled: false}
defaults: {limits: {messages: ["1000000/1m", "10000000/1h"], recipients: ["10000000/1d"]}, user_limits: {messages: ["100000000/1d"]}}
YAML
    args+=(--milter "$name=env PYTHONPATH=$W/$name/milter $PY -m outpost run -c $W/$name.yaml --socket {socket}")
done
"$PY" bench/throughput.py --no-noop "${args[@]}" --sender bench@example.com "$@" | tee "$W/out"
"$PY" - "$W/out" <<'PYEOF'
import collections, statistics, sys
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    f = line.split()
    if line.startswith("round ") and len(f) >= 10 and f[2].startswith("r"):
        rounds[(f[1], f[3])][f[2]] = (float(f[5]), float(f[9]))
names = sorted({n for r in rounds.values() for n in r}, key=lambda n: int(n[1:n.index("-")]))
print(f"\nsame-round ratios to {names[0]} (median, quartiles):")
for n in names[1:]:
    for i, what in ((0, "msgs/s"), (1, "milter CPU/msg")):
        xs = [r[n][i] / r[names[0]][i] for r in rounds.values() if n in r and names[0] in r and r[names[0]][i]]
        if len(xs) > 1:
            q = statistics.quantiles(xs, n=4)
            print(f"  {n:14} {what:15} {statistics.median(xs):.3f}  ({q[0]:.3f}-{q[2]:.3f}, n={len(xs)})")
PYEOF
