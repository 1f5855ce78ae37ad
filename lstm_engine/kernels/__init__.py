"""Numba kernels: arrays and integers in, no Python objects, no validation.

numba invalidates a cached kernel only when its own file changes, but the kernels
freeze constants from layout.py and inline code from the other modules here. So the
cache is keyed on all of them: when any kernel source changes, the cache is cleared.
"""
import hashlib
import os


def clear_stale_cache(src_dir: str, cache_dir: str) -> bool:
    """Remove numba's cache files in cache_dir unless they were made from the current
    sources in src_dir; True when something was cleared. Must run before any kernel
    is compiled or loaded in this process (numba's index would point at removed files)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(src_dir)):
        if name.endswith(".py"):
            with open(os.path.join(src_dir, name), "rb") as f:
                h.update(name.encode() + f.read())
    stamp = os.path.join(cache_dir, "kernels.sha256")
    try:
        with open(stamp) as f:
            if f.read() == h.hexdigest():
                return False
    except OSError:
        pass
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for name in os.listdir(cache_dir):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache_dir, name))
        with open(stamp, "w") as f:
            f.write(h.hexdigest())
    except OSError:  # a read-only install: numba keeps its cache elsewhere, keyed per file
        return False
    return True


clear_stale_cache(os.path.dirname(__file__), os.path.join(os.path.dirname(__file__), "__pycache__"))
