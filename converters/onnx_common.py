"""What the ONNX importer's parts share: the refusal a handler raises, and small helpers."""
from __future__ import annotations

import numpy as np

_BIG_T, _BIG_B = 100003, 100019  # stand-ins for symbolic T and B in reshape arithmetic
_ALL = 1 << 20  # cell count of a state input whose size the graph does not fix
_MAX_RANK = 64  # numpy's: no shape, perm or axes list is longer


class _Refuse(Exception):
    pass


class _Downstream(_Refuse):
    """Refused only because an input was refused: not a cause worth reporting."""


def _prod(dims) -> int:
    """Product of Python ints, exact (numpy's int64 would wrap around)."""
    return int(np.prod(dims, dtype=object))


def _text(v) -> str:
    """A string attribute (bytes in the protobuf) as text; bytes that are not UTF-8 still
    give a name to refuse."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _is_run(cells) -> bool:
    """cells are consecutive and not empty; a range is checked without listing its members."""
    if not len(cells):
        return False
    run = range(cells[0], cells[0] + len(cells))
    return cells == run if isinstance(cells, range) else tuple(cells) == tuple(run)
