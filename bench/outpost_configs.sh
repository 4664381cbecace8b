# Outpost configurations of the throughput benchmarks, shared by
# bench/outpost_throughput.sh and bench/compare_revisions.sh (source it):
#   bare    mapping, domain policy, headers (spam engine off, no limits)
#   limits  the same + per-identity and per-user rate limits (sqlite store)
#   full    the same + the built-in spam engine (Bayes + rules)
# The keys are accepted by every revision since 711e429.
# Usage: outpost_config KIND SECRET_FILE DB_FILE > CFG.yaml
outpost_config() {
    local kind="$1" secret="$2" db="$3"
    local limits='limits: {messages: ["1000000/1m", "10000000/1h"], recipients: ["10000000/1d"]}, user_limits: {messages: ["100000000/1d"]}'
    cat <<YAML
secret_file: $secret
store: sqlite:///$db
report_abuse_to: abuse@example.net
reports: {enabled: false}
domains: [example.com]
users:
  - {name: bench, type: ip, ips: [127.0.0.0/8], domains: [example.com], connection_limit: 1000}
YAML
    case "$kind" in
        bare) echo "spam: {enabled: false}" ;;
        limits) echo "spam: {enabled: false}"; echo "defaults: {$limits}" ;;
        # smtp-source's repetitive filler text scores as spam: the engine still
        # runs on every message, but the bench accepts whatever it decides.
        full) echo "defaults: {spam: {on_spam: accept}, $limits}" ;;
        *) echo "outpost_config: unknown configuration $kind (bare, limits, full)" >&2; return 2 ;;
    esac
}
