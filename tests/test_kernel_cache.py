"""The kernels' numba cache is cleared when any kernel source changes (not only the
file a kernel lives in: constants from layout.py are frozen into compiled code)."""
import os
import subprocess
import sys

import lstm_engine.kernels as kernels


def test_stale_cache_is_cleared(tmp_path):
    cache = os.path.join(os.path.dirname(kernels.__file__), "__pycache__")
    stamp = os.path.join(cache, "kernels.sha256")
    with open(stamp) as f:
        good = f.read()
    fake = os.path.join(cache, "fake-entry.nbi")
    try:
        with open(stamp, "w") as f:
            f.write("stale")
        open(fake, "w").close()
        subprocess.run([sys.executable, "-c", "import lstm_engine.kernels"], check=True)
        assert not os.path.exists(fake)
        with open(stamp) as f:
            assert f.read() == good
        open(fake, "w").close()  # an up-to-date stamp leaves the cache alone
        subprocess.run([sys.executable, "-c", "import lstm_engine.kernels"], check=True)
        assert os.path.exists(fake)
    finally:
        if os.path.exists(fake):
            os.remove(fake)
