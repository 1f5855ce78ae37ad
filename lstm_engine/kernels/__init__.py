"""Numba kernels: arrays and integers in, no Python objects, no validation.

numba invalidates a cached kernel only when its own file changes, but the kernels
freeze constants from layout.py and inline code from the other modules here. So the
cache is keyed on all of them: when any kernel source changes, the cache is cleared.
"""
import hashlib
import os


def _clear_stale_cache():
    here = os.path.dirname(__file__)
    cache = os.path.join(here, "__pycache__")
    h = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + f.read())
    stamp = os.path.join(cache, "kernels.sha256")
    try:
        with open(stamp) as f:
            if f.read() == h.hexdigest():
                return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, name))
        with open(stamp, "w") as f:
            f.write(h.hexdigest())
    except OSError:  # a read-only install: numba keeps its cache elsewhere, keyed per file
        pass


_clear_stale_cache()
