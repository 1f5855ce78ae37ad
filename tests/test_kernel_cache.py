"""The kernels' numba cache is cleared when any kernel source changes (not only the
file a kernel lives in: constants from layout.py are frozen into compiled code).
Tested on copies: clearing the live cache under a running process corrupts numba's index."""
import shutil

from lstm_engine.kernels import clear_stale_cache


def test_cache_follows_every_kernel_source(tmp_path):
    src, cache = tmp_path / "kernels", tmp_path / "kernels" / "__pycache__"
    src.mkdir()
    (src / "lstm.py").write_text("A = 1\n")
    (src / "layout.py").write_text("BLOCK = 32\n")
    assert clear_stale_cache(str(src), str(cache))  # no stamp yet
    (cache / "lstm._step-1.py311.nbi").write_bytes(b"index")
    (cache / "lstm._step-1.py311.1.nbc").write_bytes(b"code")
    (cache / "unrelated.txt").write_text("kept")
    assert not clear_stale_cache(str(src), str(cache))  # sources unchanged: kept
    assert (cache / "lstm._step-1.py311.nbi").exists()
    (src / "layout.py").write_text("BLOCK = 64\n")  # a file no kernel is defined in
    assert clear_stale_cache(str(src), str(cache))
    assert not (cache / "lstm._step-1.py311.nbi").exists() and not (cache / "lstm._step-1.py311.1.nbc").exists()
    assert (cache / "unrelated.txt").exists()
    assert not clear_stale_cache(str(src), str(cache))


def test_read_only_cache_is_left_alone(tmp_path):
    src = tmp_path / "k"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert clear_stale_cache(str(src), str(blocker / "cache")) is False
    shutil.rmtree(src)
