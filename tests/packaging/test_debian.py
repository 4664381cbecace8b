"""The Debian package: ``dpkg-buildpackage -us -uc -b`` in a copy of the
tree, ``lintian`` on the result, and (slow, OUTPOST_SLOW_TESTS=1) the package
installed with apt in a throw-away overlay of this machine's root file system
(a private mount namespace; the host is not changed): the postinst creates the
user, /etc/outpost and the secret, ``outpost run`` serves as user outpost on
Debian's own python3-milter, dkim, spf, cryptography and redis, and a purge
removes the secret."""
import glob
import os
import shutil
import subprocess
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Debian's own Python and tools, not a virtualenv's or pyenv's.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"),
       "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian")


def _copy_tree(dest: str) -> None:
    """The files git knows about (tracked and new, not ignored), else the tree
    without virtualenvs and build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__"))
        return
    for name in filter(None, (n.decode() for n in listed)):
        src = os.path.join(ROOT, name)
        if not os.path.isfile(src):
            continue
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    missing = [t for t in TOOLS if shutil.which(t, path=ENV["PATH"]) is None]
    if missing:
        pytest.skip(f"Debian build tools missing ({' '.join(missing)}): scripts/setup.sh installs them")
    base = tmp_path_factory.mktemp("deb")
    src = base / "outpost"
    _copy_tree(str(src))
    r = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    debs = glob.glob(str(base / "outpost_*_all.deb"))
    changes = glob.glob(str(base / "outpost_*.changes"))
    assert len(debs) == 1 and len(changes) == 1, os.listdir(base)
    return debs[0], changes[0]


def _contents(deb: str) -> set[str]:
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    listing = subprocess.run(["tar", "t"], input=out, capture_output=True, check=True).stdout
    return {line.lstrip(".") for line in listing.decode().splitlines()}


def test_package_contents(built):
    deb, _ = built
    files = _contents(deb)
    for path in ("/usr/bin/outpost", "/usr/share/man/man8/outpost.8.gz",
                 "/usr/share/man/man5/outpost.yaml.5.gz", "/lib/systemd/system/outpost.service",
                 "/lib/systemd/system/outpost.socket", "/usr/lib/sysusers.d/outpost.conf",
                 "/usr/share/doc/outpost/examples/outpost.yaml",
                 "/usr/share/doc/outpost/examples/grafana/outpost.json",
                 "/usr/share/doc/outpost/examples/prometheus/alerts.yml",
                 "/usr/share/doc/outpost/configuration.rst.gz",
                 "/usr/share/doc/outpost/copyright",
                 "/usr/lib/python3/dist-packages/outpost/data/default_model.bin",
                 "/lib/systemd/system/outpost-panel.service",
                 "/lib/systemd/system/outpost-quarantine.service",
                 "/lib/systemd/system/outpost-quarantine.path",
                 "/usr/lib/python3/dist-packages/outpost/panel/templates/base.html",
                 "/usr/lib/python3/dist-packages/outpost/panel/static/panel.css"):
        assert path in files, path
    # contrib/ and the man pages once, through dh_installexamples / dh_installman
    assert not [p for p in files if p.startswith("/usr/share/doc/outpost-milter")]
    info = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True,
                          check=True).stdout
    for dep in ("python3-milter", "python3-dkim", "python3-spf", "python3-idna",
                "python3-prometheus-client", "adduser"):
        assert dep in info
    recommends = subprocess.run(["dpkg-deb", "-f", deb, "Recommends"], capture_output=True,
                                text=True, check=True).stdout
    assert "python3-flask" in recommends and "python3-waitress" in recommends    # the panel
    unit = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    text = subprocess.run(["tar", "xO", "./lib/systemd/system/outpost.service"], input=unit,
                          capture_output=True, check=True).stdout.decode()
    assert "/usr/local/bin" not in text and "/usr/bin/outpost" in text
    assert "check-config --strict" in text and "Type=notify" in text


def test_lintian(built):
    _, changes = built
    r = subprocess.run(["lintian", "--fail-on", "error", changes], env=ENV,
                       capture_output=True, text=True, timeout=300)
    tags = [line for line in r.stdout.splitlines() if line[:2] in ("E:", "W:")]
    # Allowed: groff's remark that a tall table cell does not fit on a printed
    # page (the reference's tables; on a terminal man(1) shows one long page).
    unexpected = [t for t in tags if not ("groff-message" in t and "will not fit on one page" in t)]
    assert r.returncode == 0 and unexpected == [], r.stdout + r.stderr


INSTALL = textwrap.dedent(r"""
    set -eu
    deb="$1"
    mount -t tmpfs tmpfs /mnt
    mkdir -p /mnt/upper /mnt/work /mnt/root
    mount -t overlay overlay -o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work /mnt/root
    mount -t proc proc /mnt/root/proc
    mount --rbind /dev /mnt/root/dev
    mount -t tmpfs tmpfs /mnt/root/run
    printf '#!/bin/sh\nexit 101\n' > /mnt/root/usr/sbin/policy-rc.d
    chmod 755 /mnt/root/usr/sbin/policy-rc.d
    cp "$deb" /mnt/root/tmp/outpost.deb
    in_root() { chroot /mnt/root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
                DEBIAN_FRONTEND=noninteractive "$@"; }
    in_root apt-get install -y -qq --no-install-recommends /tmp/outpost.deb >/dev/null
    echo "user: $(in_root id -un outpost) $(in_root id -gn outpost)"
    echo "etc: $(in_root stat -c '%U:%G %a' /etc/outpost)"
    echo "secret: $(in_root stat -c '%U:%G %a %s' /etc/outpost/secret)"
    echo "state: $(in_root stat -c '%U:%G %a' /var/lib/outpost /var/spool/outpost | tr '\n' ' ')"
    echo "version: $(in_root outpost --version)"
    echo "man: $(in_root man -w outpost) $(in_root man -w 5 outpost.yaml)"
    cat > /mnt/root/etc/outpost/outpost.yaml <<'YAML'
    listen: unix:/run/outpost/outpost.sock
    store: sqlite:///var/lib/outpost/state.db
    secret_file: /etc/outpost/secret
    report_abuse_to: abuse@example.net
    domains: [example.com]
    reports: {enabled: false}
    users:
      - {name: web, type: ip, ips: [192.0.2.0/28], domains: [example.com]}
    YAML
    in_root install -d -o outpost -g outpost /run/outpost
    in_root runuser -u outpost -- outpost check-config -c /etc/outpost/outpost.yaml
    echo "check-config: $?"
    in_root runuser -u outpost -- outpost run -c /etc/outpost/outpost.yaml --workers 1 \
        --socket-group outpost > /mnt/root/tmp/run.log 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do [ -S /mnt/root/run/outpost/outpost.sock ] && break; sleep 0.1; done
    echo "socket: $(in_root stat -c '%U:%G %a' /run/outpost/outpost.sock)"
    kill -TERM "$pid"; wait "$pid" || true
    in_root dpkg --purge outpost >/dev/null
    echo "purged secret: $(in_root ls /etc/outpost/secret 2>&1 | grep -c 'No such file')"
""")


@pytest.mark.slow
def test_install_in_a_throwaway_root(built):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private overlay of /")
    deb, _ = built
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", INSTALL, "install",
                        deb], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert out["user"] == "outpost outpost"
    assert out["etc"] == "root:outpost 750"
    owner, mode, size = out["secret"].split()
    assert owner == "outpost:outpost" and mode == "600" and int(size) >= 16
    assert out["state"].split() == ["outpost:outpost", "750", "outpost:outpost", "750"]
    assert out["version"].startswith("outpost ")
    assert out["man"].split() == ["/usr/share/man/man8/outpost.8.gz",
                                  "/usr/share/man/man5/outpost.yaml.5.gz"]
    assert out["check-config"] == "0"
    assert out["socket"] == "outpost:outpost 660", r.stdout + r.stderr
    assert out["purged secret"] == "1"
