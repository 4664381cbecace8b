#!/bin/bash
# Set up a fresh Debian 12 machine (as root) to develop and test Outpost:
# system packages (Postfix, libmilter, Cyrus SASL, Redis, ...), then a venv
# in <repo>/.venv with Outpost installed editable plus its test extras.
#
# Idempotent and fast when everything is already there: apt is skipped when
# every package is installed, the venv is reused.
#
# Environment:
#   OUTPOST_APT_EXTRA   extra apt packages, space separated
#   OUTPOST_PYTHON      interpreter for the venv (default: first python3 on PATH)
#   OUTPOST_VENV        venv directory (default: <repo>/.venv)
#   OUTPOST_SKIP_APT=1  do not touch system packages
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OUTPOST_VENV:-$REPO/.venv}"
PYTHON="${OUTPOST_PYTHON:-$(command -v python3 || true)}"

# System packages.  Extend this list (one per line, with the reason) rather
# than installing things elsewhere.
APT_PACKAGES=(
    postfix            # real MTA for end-to-end tests; smtp-source/smtp-sink for bench/
    libmilter-dev      # pymilter compiles against libmilter
    gcc                # ... with a C compiler
    libc6-dev
    sasl2-bin          # saslpasswd2: SASL users of the test Postfix
    libsasl2-modules   # PLAIN/LOGIN mechanisms (only a Recommends of libsasl2-2)
    openssl            # self-signed certificate of the test Postfix (STARTTLS/465)
    swaks              # manual SMTP testing
    redis-server       # shared-state store tests; also the Sentinels of the Sentinel tests
                       # (`redis-server CONF --sentinel`: no redis-sentinel package, whose
                       # service would start a Sentinel on port 26379)
    spamassassin       # SpamAssassin as an extra engine (tests) and the quality benchmark baseline
    spamd              # ... its daemon, spoken to over the spamd protocol
    rspamd             # rspamd as an extra engine (HTTP /checkv2), tests
    m4                 # Sendmail tests: building sendmail.cf from .mc
    libwrap0           # ... libraries of the unpacked sendmail-bin
    liblockfile1
    util-linux         # unshare: Sendmail test instances get their own hostname and /dev/log
    nsd                # a real authoritative DNS server on loopback for SPF, DKIM and DNS-list tests
    libopendkim11      # OpenDKIM's verifier library: every signature is checked by it too
    opendkim           # bench/: OpenDKIM (signing only) as the baseline of the throughput benchmarks
    systemd            # systemd-analyze (verify, security) and systemd-socket-activate: the units' tests
    strace             # ... every system call of Outpost inside the unit's SystemCallFilter
    groff-base         # man pages: tests/docs renders outpost(8) and outpost.yaml(5)
    python3-docutils   # ... built from docs/ (also a build dependency of the Debian package)
    dpkg-dev           # the Debian package (debian/): tests/packaging builds it ...
    debhelper
    dh-python
    pybuild-plugin-pyproject
    python3-all
    python3-setuptools
    python3-wheel
    fakeroot
    lintian            # ... and checks it (about 7 MB of packages in all)
    chromium           # the panel's real-browser tests (Playwright drives the system browser)
)
# shellcheck disable=SC2206
APT_PACKAGES+=(${OUTPOST_APT_EXTRA:-})

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt, Postfix test instances)"
[ -n "$PYTHON" ] || die "no python3 on PATH (set OUTPOST_PYTHON)"
PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)')" || die "$PYTHON does not run"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
    || die "$PYTHON is older than Python 3.9"
case "$("$PYTHON" -c 'import sys; print(sys.prefix)')" in
    /usr)  # Debian's own Python needs its venv module and headers as packages
        PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        APT_PACKAGES+=("python$PYVER-venv" "python$PYVER-dev") ;;
esac

missing_packages() {
    local pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
        [ "${status:0:2}" = "ii" ] || printf '%s\n' "$pkg"
    done
}

# A system Postfix (default instance, port 25) must not run: tests start
# their own instances on loopback ports.
stop_system_postfix() {
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now postfix.service >/dev/null 2>&1 || true
    fi
    if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
        log "stopping the system Postfix"
        postfix stop >/dev/null 2>&1 || true
    fi
    if postfix status >/dev/null 2>&1; then
        die "a system Postfix is still running"
    fi
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages present"
        return
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No /etc/postfix/main.cf, no prompt: the system Postfix stays unconfigured.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep package scripts from starting daemons (Postfix, Redis) during install.
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"
        # shellcheck disable=SC2064
        trap "rm -f '$policy'" EXIT
    fi
    # Refresh the package lists only when they are missing or a day old.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)" ]; then
        apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
}

setup_venv() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating $VENV with $PYTHON"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' does not work"
    fi
    # Reinstall only when the packaging metadata changed since the last run.
    local stamp="$VENV/.outpost-setup-stamp" digest
    digest="$(cat "$REPO/setup.cfg" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] \
            && "$VENV/bin/python" -c 'import outpost, Milter, pytest, nacl, aiosmtpd, hypothesis, parsedmarc, flask, waitress, playwright' 2>/dev/null; then
        log "venv up to date"
        return
    fi
    log "installing Outpost (editable) and test extras"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The distribution was called "outpost" before 0.2 (now outpost-milter).
    "$VENV/bin/python" -m pip uninstall -q -y outpost >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
    echo "$digest" > "$stamp"
}

# Sendmail cannot be installed beside Postfix (both are "the MTA"): the
# tests run it from the unpacked Debian packages, fetched here into the cache
# that tests/services/sendmail.py reads.
fetch_sendmail() {
    local cache="${OUTPOST_SENDMAIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outpost-tests/sendmail}" pkg
    mkdir -p "$cache"
    for pkg in sendmail-bin sendmail-cf; do
        if ! compgen -G "$cache/${pkg}_*.deb" >/dev/null; then
            log "fetching $pkg into $cache"
            (cd "$cache" && apt-get download -qq "$pkg") \
                || (apt-get update -qq && cd "$cache" && apt-get download -qq "$pkg") \
                || die "apt-get download $pkg failed"
        fi
    done
}

if [ "${OUTPOST_SKIP_APT:-0}" != 1 ]; then
    install_packages
    stop_system_postfix
    fetch_sendmail
fi
setup_venv
log "done: $VENV/bin/python -m pytest"
