"""The sdist and the wheel (``python -m build``: the wheel is built from the
sdist) carry what an operator needs: contrib/, the documentation, the manual
pages, the licence and the changelog; the distribution is outpost-milter and
the command outpost."""
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.packaging.test_debian import _copy_tree

pytest.importorskip("build", reason="the 'build' package is a test extra")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    src = base / "src"
    _copy_tree(str(src))
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(base / "out"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "manual pages did not build" not in r.stderr
    names = sorted(os.listdir(base / "out"))
    sdist = next(base / "out" / n for n in names if n.endswith(".tar.gz"))
    wheel = next(base / "out" / n for n in names if n.endswith(".whl"))
    return sdist, wheel


def test_sdist_contents(dists):
    sdist, _ = dists
    assert os.path.basename(sdist).startswith("outpost_milter-")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for path in ("LICENSE", "CHANGELOG.rst", "README.rst", "contrib/outpost.yaml",
                 "contrib/postfix/main.cf", "contrib/sendmail/outpost.mc",
                 "docs/configuration.rst", "docs/man/outpost.8.rst", "docs/man/outpost.yaml.5.rst",
                 "scripts/build_man.py", "milter/outpost/data/default_model.bin"):
        assert path in names, path


def test_wheel_contents(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(info).decode()
        metadata = zf.read(info.replace("entry_points.txt", "METADATA")).decode()
    data = "outpost_milter-" + os.path.basename(wheel).split("-")[1] + ".data/data/"
    for path in ("share/man/man8/outpost.8", "share/man/man5/outpost.yaml.5",
                 "share/doc/outpost-milter/contrib/outpost.yaml",
                 "share/doc/outpost-milter/contrib/postfix/master.cf"):
        assert data + path in names, path
    assert "outpost/data/default_model.bin" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names)
    assert "outpost = outpost.cli:main" in entry_points
    assert "Name: outpost-milter" in metadata
