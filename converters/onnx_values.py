"""The abstract values onnx_import.py gives every tensor of a graph (labels: see there)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class Data:
    kind: str  # ids | frames | lstm_y | state | raw3 (a float 3-D graph input, frames or state)
    axes: tuple  # labels, see module docstring
    stage: object = None  # frames/lstm_y: stage index, or "head"
    which: str = ""  # state: "h" or "c"
    cells: tuple = ()  # state: cell indices along S (or the one cell when S is gone)
    source: str = ""  # the graph input it comes from ("" = computed)
    head: tuple = ()  # frames at the head: what has been applied ("mm", "bias", "act")


@dataclass(frozen=True)
class ShapeVec:
    dims: tuple  # ints, or "T"/"B"


@dataclass(frozen=True)
class ZeroState:
    """Zeros made at run time (ConstantOfShape), as exporters build a default state."""


@dataclass(frozen=True)
class AnyShape:
    """The shape of a tensor this importer does not follow: good for making zeros only."""


@dataclass(frozen=True)
class Unknown:
    why: str
