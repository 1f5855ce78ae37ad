"""The 11 ONNX recurrent activations: names, codes, alpha/beta defaults, NumPy forms.

alpha/beta follow onnxruntime, the oracle of this project: an activation that takes
parameters consumes the next value of `activation_alpha`/`activation_beta` in order,
and falls back to LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0, and 0 for all others.
(The ONNX text suggests ThresholdedRelu alpha=1 and Affine alpha=1; onnxruntime uses 0,
and a model must give the same numbers here as there.)
"""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .files import brief

# name -> (code used by the kernels, takes alpha, takes beta, default alpha, default beta)
_TABLE = {
    "Sigmoid": (0, False, False, 0.0, 0.0),
    "Tanh": (1, False, False, 0.0, 0.0),
    "Relu": (2, False, False, 0.0, 0.0),
    "LeakyRelu": (3, True, False, 0.01, 0.0),
    "ThresholdedRelu": (4, True, False, 0.0, 0.0),
    "ScaledTanh": (5, True, True, 0.0, 0.0),
    "HardSigmoid": (6, True, True, 0.2, 0.5),
    "Elu": (7, True, False, 1.0, 0.0),
    "Softsign": (8, False, False, 0.0, 0.0),
    "Softplus": (9, False, False, 0.0, 0.0),
    "Affine": (10, True, True, 0.0, 0.0),
}
NAMES = tuple(_TABLE)
_BY_LOWER = {n.lower(): n for n in NAMES}


@dataclass(frozen=True)
class Activation:
    """One activation with its parameters; unused parameters are always 0."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def __post_init__(self):
        # any case names the function, as in make() and ONNX files; an unknown name stays
        # as given for Model to refuse with the list of names
        canon = _BY_LOWER.get(self.name.lower()) if isinstance(self.name, str) else None
        if canon is not None:
            object.__setattr__(self, "name", canon)

    @property
    def code(self) -> int:
        return _TABLE[self.name][0]

    @property
    def takes(self) -> tuple[bool, bool]:
        return _TABLE[self.name][1], _TABLE[self.name][2]


SIGMOID = Activation("Sigmoid")
TANH = Activation("Tanh")
DEFAULT = (SIGMOID, TANH, TANH)  # LSTM's (f, g, h)


def canonical_name(name: str) -> str | None:
    """The canonical spelling of an activation name (case-insensitive), or None."""
    return _BY_LOWER.get(str(name).lower())


def finite_f32(v) -> float:
    """v as the float32 value the kernels use (as ONNX attributes hold it). ValueError unless
    v is a real number that float32 holds finitely: a NaN or infinity in an activation
    would poison every state it touches."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    try:
        with np.errstate(over="ignore"):
            y = float(np.float32(float(v)))
    except OverflowError:  # an int beyond float range, e.g. 10**400 from JSON
        y = math.inf
    if not math.isfinite(y):
        raise ValueError(f"must be a finite number within float32 range, got {brief.repr(v)}")
    return y


def make(name: str, alpha: float | None = None, beta: float | None = None) -> Activation:
    """An Activation with onnxruntime's defaults for parameters not given.

    Raises KeyError for an unknown name and ValueError for a parameter that is not a
    finite float32 number (callers turn both into a ModelError).
    """
    canon = canonical_name(name)
    if canon is None:
        raise KeyError(name)
    _, ta, tb, da, db = _TABLE[canon]
    return Activation(
        canon,
        finite_f32(da if alpha is None else alpha) if ta else 0.0,
        finite_f32(db if beta is None else beta) if tb else 0.0,
    )


def from_onnx_lists(names, alphas=(), betas=()) -> list[Activation]:
    """Consume ONNX `activations`, `activation_alpha`, `activation_beta` like onnxruntime."""
    alphas, betas = list(alphas), list(betas)
    out = []
    for name in names:
        canon = canonical_name(name)
        if canon is None:
            raise KeyError(name)
        ta, tb = _TABLE[canon][1], _TABLE[canon][2]
        a = alphas.pop(0) if ta and alphas else None
        b = betas.pop(0) if tb and betas else None
        out.append(make(canon, a, b))
    return out


def to_onnx_lists(acts) -> tuple[list[str], list[float], list[float]]:
    """Inverse of `from_onnx_lists`: every parameter written explicitly."""
    names, alphas, betas = [], [], []
    for a in acts:
        names.append(a.name)
        ta, tb = a.takes
        if ta:
            alphas.append(a.alpha)
        if tb:
            betas.append(a.beta)
    return names, alphas, betas


def apply(act: Activation, x: np.ndarray) -> np.ndarray:
    """The activation as written in the ONNX operator text (NumPy, any float dtype)."""
    a, b = x.dtype.type(act.alpha), x.dtype.type(act.beta)
    n = act.name
    if n == "Sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x), without overflow
    if n == "Tanh":
        return np.tanh(x)
    if n == "Relu":
        return np.maximum(x, 0)
    if n == "LeakyRelu":
        return np.where(x >= 0, x, a * x)
    if n == "ThresholdedRelu":
        return np.where(x > a, x, 0)
    if n == "ScaledTanh":
        return a * np.tanh(b * x)
    if n == "HardSigmoid":
        return np.clip(a * x + b, 0, 1)
    if n == "Elu":
        return np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0)))
    if n == "Softsign":
        return x / (1 + np.abs(x))
    if n == "Softplus":
        return np.logaddexp(0, x)
    if n == "Affine":
        return a * x + b
    raise KeyError(n)
