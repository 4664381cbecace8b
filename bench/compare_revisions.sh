#!/bin/bash
# Same-run throughput of Postfix + Outpost at several git revisions, to hold a
# change or a speed trick to the bar of docs/benchmarks.rst.  --config picks
# the configurations of bench/outpost_throughput.sh (bench/outpost_configs.sh):
# bare, limits (the default: sqlite store, rate limits, connection slots; spam
# engine off) or full (+ the spam engine), or several, comma-separated, all in
# one run.  Each revision runs its `milter/` tree from `git archive` with this
# checkout's venv; rounds interleave every revision and configuration.  Prints
# throughput.py's table, then per configuration the median and quartiles of
# each revision's same-round ratios to the first revision (messages/s and
# milter CPU per message), per size and over all sizes.
# Usage: bench/compare_revisions.sh [--config bare|limits|full[,...]] REV REV [...]
#            -- [throughput.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/outpost_configs.sh
PY="${PYTHON:-$PWD/.venv/bin/python}"
kinds=limits
if [ "${1:-}" = "--config" ]; then kinds="$2"; shift 2; fi
revs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do revs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#revs[@]} -ge 2 ] || {
    echo "usage: $0 [--config bare|limits|full[,...]] REV REV [...] -- [throughput.py options]" >&2
    exit 2
}
W="$(mktemp -d /tmp/outpost-compare-XXXXXX)"
chmod 755 "$W"
trap 'rm -rf "$W"' EXIT
PYTHONPATH=milter "$PY" -m outpost secret "$W/secret" >/dev/null
args=()
for i in "${!revs[@]}"; do
    tree="r$i-$(git rev-parse --short "${revs[$i]}")"
    mkdir -p "$W/$tree"
    git archive "${revs[$i]}" milter | tar -x -C "$W/$tree"
    for kind in ${kinds//,/ }; do
        name="$kind-$tree"
        outpost_config "$kind" "$W/secret" "$W/$name.db" > "$W/$name.yaml"
        PYTHONPATH="$W/$tree/milter" "$PY" -m outpost check-config -c "$W/$name.yaml" >/dev/null
        args+=(--milter "$name=env PYTHONPATH=$W/$tree/milter $PY -m outpost run -c $W/$name.yaml --socket {socket}")
    done
done
"$PY" -m bench.throughput --no-noop "${args[@]}" --sender bench@example.com "$@" | tee "$W/out"
"$PY" - "$W/out" <<'PYEOF'
import collections, re, statistics, sys
line_re = re.compile(r"round (\d+) (\w+)-r(\d+)-(\S+) +(\d+) B +([\d.]+) msgs/s +milter CPU +([\d.]+)")
runs = collections.defaultdict(dict)  # (config, size, round) -> {rev index: (msgs/s, CPU/msg)}
for line in open(sys.argv[1]):
    m = line_re.match(line)
    if m:
        rnd, kind, rev, _, size, rate, cpu = m.groups()
        runs[(kind, int(size), int(rnd))][int(rev)] = (float(rate), float(cpu))
print("\nsame-round ratios to revision r0 (median, quartiles, number of rounds):")
for kind in dict.fromkeys(k for k, _, _ in runs):
    sizes = sorted({s for k, s, _ in runs if k == kind})
    revs = sorted({r for (k, _, _), v in runs.items() if k == kind for r in v})
    for rev in revs[1:]:
        for i, what in ((0, "msgs/s"), (1, "milter CPU/msg")):
            for size in sizes + ["all"]:
                xs = [v[rev][i] / v[0][i] for (k, s, _), v in runs.items()
                      if k == kind and size in (s, "all") and rev in v and 0 in v and v[0][i]]
                if len(xs) > 1:
                    q = statistics.quantiles(xs, n=4)
                    print(f"  {kind:7} r{rev}/r0 {what:15} {str(size):>6}  "
                          f"{statistics.median(xs):.3f}  ({q[0]:.3f}-{q[2]:.3f}, n={len(xs)})")
PYEOF
