"""Numba kernels: arrays and integers in, no Python objects, no validation.

Two things numba's cache does not see are handled here, before any kernel module is
imported (decorating a kernel fixes where its cache lives):
- the kernel variant (isa.py) changes the generated code without changing a source
  line;
- numba keys a cached kernel on its own file only, but kernels freeze constants from
  layout.py and inline code from the other modules here.
So every kernel caches in a folder named for the variant and a digest of all the
kernel sources (_IsaLocator), wherever numba would put its cache (in the package,
NUMBA_CACHE_DIR, the user's cache): a process never loads code made for another
variant or from other sources.
"""
import hashlib
import os
import shutil
import warnings

from numba.core import caching
from numba.core import config as numba_config

from . import config
from .isa import ISA, VARIANTS

_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.61
_HERE = os.path.dirname(os.path.abspath(__file__))


def sources_digest(src_dir: str) -> str:
    """A digest of every kernel source file in src_dir (its names and bytes)."""
    h = hashlib.sha256()
    try:
        for name in sorted(os.listdir(src_dir)):
            if name.endswith(".py"):
                with open(os.path.join(src_dir, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    except OSError:  # sources not on a file system (a zip, a frozen app): they cannot change
        h.update(b"unreadable")
    return h.hexdigest()[:16]


def prune_stale(cache_dir: str, digest: str) -> int:
    """Remove the variant folders in cache_dir made from other sources; returns how many.
    Best effort: a folder in use by a process with other sources only costs it a compile."""
    removed = 0
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(cache_dir, name)
        if name.partition("-")[0] in VARIANTS and not name.endswith("-" + digest):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif name.endswith((".nbi", ".nbc", ".sha256")):  # from before the folders: never read again
            os.remove(path)
            removed += 1
    return removed


_FOLDER = f"{ISA.key}-{sources_digest(_HERE)}"


class _IsaLocator(caching._CacheLocator):
    """Where numba would cache a kernel of this package, plus the folder _FOLDER."""

    def __init__(self, inner):
        self._inner = inner

    def get_cache_path(self):
        return os.path.join(self._inner.get_cache_path(), _FOLDER)

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


if numba_config.CACHE_LOCATOR_CLASSES:
    # numba then asks only the locators named there, never _IsaLocator: variants could
    # load each other's code, so these kernels compile in every process instead
    warnings.warn("NUMBA_CACHE_LOCATOR_CLASSES is set: lstm-engine's kernels are not cached "
                  "(their cache must be kept apart per CPU variant)", RuntimeWarning, stacklevel=2)
    config.FLAGS["cache"] = False
elif _IsaLocator not in _CacheImpl._locator_classes:
    _CacheImpl._locator_classes.insert(0, _IsaLocator)
prune_stale(os.path.join(_HERE, "__pycache__"), _FOLDER.rsplit("-", 1)[1])
