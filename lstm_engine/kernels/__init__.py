"""Numba kernels: arrays and integers in, no Python objects, no validation.

Two things numba's cache does not see are handled here, before any kernel module is
imported (decorating a kernel fixes where its cache lives):
- the kernel variant (isa.py) changes the generated code without changing a source
  line, so every variant caches in a folder of its own (_IsaLocator);
- a cached kernel is invalidated only when its own file changes, but kernels freeze
  constants from layout.py and inline code from the other modules here. So the cache
  is keyed on all of them: when any kernel source changes, the cache is cleared.
"""
import hashlib
import os

from numba.core import caching

from .isa import ISA

_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.61
_HERE = os.path.dirname(os.path.abspath(__file__))


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


class _IsaLocator(caching._CacheLocator):
    """Where numba would cache a kernel of this package, plus a folder per variant
    (ISA.key), so a process never loads code generated for another variant."""

    def __init__(self, inner):
        self._inner = inner

    def get_cache_path(self):
        return os.path.join(self._inner.get_cache_path(), ISA.key)

    def get_source_stamp(self):
        return self._inner.get_source_stamp()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _HERE:
            return None  # not ours: numba's own locators decide
        for inner_cls in _CacheImpl._locator_classes:
            if inner_cls is cls:
                continue
            inner = inner_cls.from_function(py_func, py_file)
            if inner is None:
                continue
            self = cls(inner)
            try:
                self.ensure_cache_path()
            except OSError:
                continue
            return self
        return None


if _IsaLocator not in _CacheImpl._locator_classes:
    _CacheImpl._locator_classes.insert(0, _IsaLocator)
clear_stale_cache(_HERE, os.path.join(_HERE, "__pycache__", ISA.key))
