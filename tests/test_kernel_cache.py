"""The kernels' numba cache lives in a folder named for the kernel variant and a digest
of every kernel source (not only the file a kernel lives in: constants from layout.py
and code from simd.py are frozen into compiled kernels). Tested on copies: removing the
live cache under a running process corrupts numba's index."""
import os
import subprocess
import sys

from lstm_engine import kernels
from lstm_engine.kernels import prune_stale, sources_digest
from lstm_engine.kernels.isa import ISA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digest_follows_every_kernel_source(tmp_path):
    (tmp_path / "lstm.py").write_text("A = 1\n")
    (tmp_path / "layout.py").write_text("BLOCK = 32\n")
    (tmp_path / "notes.txt").write_text("not a source")
    d0 = sources_digest(str(tmp_path))
    assert sources_digest(str(tmp_path)) == d0
    (tmp_path / "notes.txt").write_text("changed")
    assert sources_digest(str(tmp_path)) == d0
    (tmp_path / "layout.py").write_text("BLOCK = 64\n")  # a file no kernel is defined in
    d1 = sources_digest(str(tmp_path))
    assert d1 != d0
    (tmp_path / "simd.py").write_text("")  # a new module
    assert sources_digest(str(tmp_path)) not in (d0, d1)
    assert sources_digest(str(tmp_path / "missing")) == sources_digest(str(tmp_path / "gone"))


def test_prune_removes_folders_of_other_sources_only(tmp_path):
    for name in ("avx512-w16-f6-aaaa", "avx2-w8-f3-aaaa", "avx512-w16-f6-bbbb", "generic-w4-f3",
                 "unrelated"):
        (tmp_path / name).mkdir()
    (tmp_path / "lstm._step-1.py311.nbi").write_bytes(b"index from before the folders")
    (tmp_path / "kernels.sha256").write_text("stamp from before the folders")
    (tmp_path / "keep.txt").write_text("kept")
    assert prune_stale(str(tmp_path), "aaaa") == 4
    assert sorted(os.listdir(tmp_path)) == ["avx2-w8-f3-aaaa", "avx512-w16-f6-aaaa", "keep.txt", "unrelated"]
    assert prune_stale(str(tmp_path / "missing"), "aaaa") == 0


def test_kernels_cache_in_their_folder_wherever_numba_caches(tmp_path):
    """Also under NUMBA_CACHE_DIR, where numba's own layout would mix variants."""
    code = ("import lstm_engine.kernels as k; from lstm_engine.kernels.lstm import _step; "
            "print(k._FOLDER); print(_step._cache._cache_path)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    folder, path = r.stdout.split()
    assert folder.startswith(ISA.key + "-") and path.startswith(str(tmp_path)) and path.endswith(folder)
    assert kernels._FOLDER == f"{ISA.key}-{sources_digest(os.path.dirname(kernels.__file__))}"


def test_foreign_cache_locators_switch_caching_off():
    """numba then asks only the locators named there: variants would share one cache."""
    code = "import lstm_engine.kernels.config as c; print(c.FLAGS['cache'])"
    env = dict(os.environ, NUMBA_CACHE_LOCATOR_CLASSES="InTreeCacheLocator")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False" and "not cached" in r.stderr
