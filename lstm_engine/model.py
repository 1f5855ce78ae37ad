"""`Model`: a stacked LSTM in one canonical layout, validated once, saved natively.

Canonical layout (everything float32, gates in ONNX order i, o, f, c):

    Direction.W            (4H, I)   input weights
    Direction.R            (4H, P)   recurrent weights (P = proj_size, or H)
    Direction.b            (4H,)     Wb + Rb
    Direction.peepholes    (3H,)     order i, o, f; or None
    Direction.proj         (P, H)    h = proj . (o * h(c)); or None
    Embedding.weight       (V, E)    token id -> input vector
    Head.weight            (O, K)    K = top layer's output width
    Head.bias              (O,)      or None

Converters turn every other layout (PyTorch's i, f, g, o; ONNX's stacked directions)
into this one; packing and the reference read only this one.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from . import activations as acts
from .activations import Activation
from .errors import ModelError
from .files import brief, read_safetensors

DIRECTIONS = ("forward", "reverse", "bidirectional")
HEAD_ACTIVATIONS = (None, "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Relu")
FORMAT = "lstm-engine"
FORMAT_VERSION = 1


TORCH_TO_ONNX = (0, 3, 1, 2)  # PyTorch stores gate blocks i, f, g, o; ONNX (canonical) i, o, f, c
ONNX_TO_TORCH = (0, 2, 3, 1)


def permute_gates(a, H: int, order) -> np.ndarray:
    """The four H-row gate blocks of a (4H, ...) array, taken in `order`."""
    return np.concatenate([a[q * H:(q + 1) * H] for q in order])


def _f32(name, a, ndim):
    """`a` as a float32 C array of `ndim` dimensions, or ModelError naming `name`."""
    try:
        arr = np.ascontiguousarray(a, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{name}: not a numeric array ({e})") from None
    if not arr.flags.writeable:  # e.g. viewing a file's buffer; the kernels take writable arrays
        arr = arr.copy()
    if arr.ndim != ndim:
        raise ModelError(f"{name}: expected {ndim}-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ModelError(f"{name}: contains NaN or infinity")
    return arr


def _shape(name, arr, expected):
    if arr.shape != tuple(expected):
        raise ModelError(f"{name}: expected shape {tuple(expected)}, got {arr.shape}")


def _finite(name, v) -> float:
    """A scalar option the kernels take as float32: a finite number, or ModelError naming `name`."""
    try:
        return acts.finite_f32(v)
    except ValueError as e:
        raise ModelError(f"{name}: {e}") from None


def _choice(name, v, options):
    """v if it is one of `options` (compared only with objects of their types: an array's
    == is elementwise), else ModelError naming `name`."""
    if not any(isinstance(v, type(o)) and v == o for o in options):
        raise ModelError(f"{name}: {brief.repr(v)} is not one of {options}")
    return v


def _flag(name, v) -> bool:
    if not isinstance(v, (bool, np.bool_, numbers.Integral)) or v not in (0, 1):
        raise ModelError(f"{name}: expected a bool, got {brief.repr(v)}")
    return bool(v)


@dataclass
class Direction:
    """Weights and activations of one direction of one layer (shapes: module docstring)."""

    W: np.ndarray
    R: np.ndarray
    b: np.ndarray | None = None
    peepholes: np.ndarray | None = None
    proj: np.ndarray | None = None
    activations: tuple = acts.DEFAULT  # (f, g, h)


@dataclass
class Layer:
    """One LSTM layer: one direction, or forward and reverse of a bidirectional layer."""

    directions: list
    direction: str = "forward"
    clip: float | None = None
    input_forget: bool = False

    @property
    def hidden_size(self) -> int:
        return self.directions[0].W.shape[0] // 4

    @property
    def input_size(self) -> int:
        return self.directions[0].W.shape[1]

    @property
    def proj_size(self) -> int:
        """Size of h: proj_size when projected, else hidden_size."""
        return self.directions[0].R.shape[1]

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def output_size(self) -> int:
        return self.num_directions * self.proj_size


@dataclass
class Embedding:
    weight: np.ndarray  # (V, E)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]


@dataclass
class Head:
    weight: np.ndarray  # (O, K)
    bias: np.ndarray | None = None  # (O,)
    activation: str | None = None  # one of HEAD_ACTIVATIONS


@dataclass
class Model:
    """A stacked LSTM with optional embedding in front and dense head on top.

    `layout` says how 3-D inputs of the offline `Engine.run` are ordered:
    0 = (T, B, I) as ONNX's default, 1 = (B, T, I) as ONNX layout=1 / batch_first.
    Construction validates everything and raises ModelError with the field at fault.
    """

    layers: list
    embedding: Embedding | None = None
    head: Head | None = None
    layout: int = 0
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._validate()

    # ---- validation -------------------------------------------------------------
    def _validate(self):
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            raise ModelError("Model needs at least one Layer")
        self.layers = list(self.layers)
        if isinstance(self.layout, (bool, np.bool_)) or not isinstance(self.layout, numbers.Integral) \
                or self.layout not in (0, 1):
            raise ModelError(f"layout must be 0 (T, B, I) or 1 (B, T, I), got {brief.repr(self.layout)}")
        self.layout = int(self.layout)
        prev = None
        if self.embedding is not None:
            self.embedding.weight = _f32("embedding.weight", self.embedding.weight, 2)
            if self.embedding.weight.shape[0] < 1:
                raise ModelError("embedding.weight: needs at least one row")
            prev = self.embedding.weight.shape[1]
        for li, layer in enumerate(self.layers):
            self._validate_layer(li, layer)
            if prev is not None and layer.input_size != prev:
                raise ModelError(
                    f"layers[{li}]: input size {layer.input_size} does not match the "
                    f"{'embedding width' if li == 0 else f'output size {prev} of layers[{li - 1}]'}"
                    + ("" if li == 0 else f" ({prev})"))
            prev = layer.output_size
        if self.head is not None:
            h = self.head
            h.weight = _f32("head.weight", h.weight, 2)
            if h.weight.shape[1] != prev or h.weight.shape[0] < 1:
                raise ModelError(f"head.weight: expected shape (O, {prev}), got {h.weight.shape}")
            if h.bias is not None:
                h.bias = _f32("head.bias", h.bias, 1)
                _shape("head.bias", h.bias, (h.weight.shape[0],))
            _choice("head.activation", h.activation, HEAD_ACTIVATIONS)

    def _validate_layer(self, li, layer):
        where = f"layers[{li}]"
        if not isinstance(layer, Layer):
            raise ModelError(f"{where}: expected a Layer, got {type(layer).__name__}")
        _choice(f"{where}.direction", layer.direction, DIRECTIONS)
        want = 2 if layer.direction == "bidirectional" else 1
        if not isinstance(layer.directions, (list, tuple)) or len(layer.directions) != want:
            raise ModelError(f"{where}: direction {layer.direction!r} needs {want} Direction(s)")
        layer.directions = list(layer.directions)
        if layer.clip is not None:
            clip = _finite(f"{where}.clip", layer.clip)
            if not clip > 0:
                raise ModelError(f"{where}.clip: must be a positive finite number, got {layer.clip!r}")
            layer.clip = clip
        layer.input_forget = _flag(f"{where}.input_forget", layer.input_forget)
        first = None
        for di, d in enumerate(layer.directions):
            dw = f"{where}.directions[{di}]"
            if not isinstance(d, Direction):
                raise ModelError(f"{dw}: expected a Direction, got {type(d).__name__}")
            d.W = _f32(f"{dw}.W", d.W, 2)
            d.R = _f32(f"{dw}.R", d.R, 2)
            if d.W.shape[0] % 4 or d.W.shape[0] == 0 or d.W.shape[1] == 0:
                raise ModelError(f"{dw}.W: expected shape (4*hidden_size, input_size), got {d.W.shape}")
            H, I = d.W.shape[0] // 4, d.W.shape[1]
            P = d.R.shape[1]
            if d.R.shape[0] != 4 * H or P == 0:
                raise ModelError(f"{dw}.R: expected shape ({4 * H}, hidden or proj size), got {d.R.shape}")
            d.b = np.zeros(4 * H, np.float32) if d.b is None else _f32(f"{dw}.b", d.b, 1)
            _shape(f"{dw}.b", d.b, (4 * H,))
            if d.peepholes is not None:
                d.peepholes = _f32(f"{dw}.peepholes", d.peepholes, 1)
                _shape(f"{dw}.peepholes", d.peepholes, (3 * H,))
            if d.proj is not None:
                d.proj = _f32(f"{dw}.proj", d.proj, 2)
                _shape(f"{dw}.proj", d.proj, (P, H))
            elif P != H:
                raise ModelError(f"{dw}.R: has {P} columns but hidden_size is {H} and there is no proj")
            d.activations = self._validate_activations(dw, d.activations)
            if first is None:
                first = (H, I, P)
            elif (H, I, P) != first:
                raise ModelError(f"{dw}: sizes (H, I, P)={(H, I, P)} differ from the forward "
                                 f"direction's {first}")

    @staticmethod
    def _validate_activations(dw, activations) -> tuple:
        """(f, g, h) of one direction: known names, and parameters the kernels can use."""
        if not isinstance(activations, (list, tuple)) or len(activations) != 3 or \
                not all(isinstance(a, Activation) for a in activations):
            raise ModelError(f"{dw}.activations: expected three Activation (f, g, h)")
        for k, a in enumerate(activations):
            if not isinstance(a.name, str) or acts.canonical_name(a.name) != a.name:
                raise ModelError(f"{dw}.activations: unknown activation {brief.repr(a.name)}; "
                                 f"supported: {', '.join(acts.NAMES)}")
            _finite(f"{dw}.activations[{k}].alpha", a.alpha)
            _finite(f"{dw}.activations[{k}].beta", a.beta)
        return tuple(activations)

    # ---- derived facts ----------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Width of one input frame (for token models: 1, a token id)."""
        return 1 if self.embedding is not None else self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.head.weight.shape[0] if self.head is not None else self.layers[-1].output_size

    @property
    def streamable(self) -> bool:
        """True when no layer runs in reverse, so frames can be fed one at a time."""
        return all(layer.direction == "forward" for layer in self.layers)

    def cells(self):
        """(layer index, reverse?, Layer, Direction) in PyTorch's h_n order."""
        for li, layer in enumerate(self.layers):
            for di, d in enumerate(layer.directions):
                yield li, layer.direction == "reverse" or di == 1, layer, d

    @property
    def state_sizes(self) -> list:
        """[(P, H)] per cell: sizes of h and c, in state order."""
        return [(layer.proj_size, layer.hidden_size) for _, _, layer, _ in self.cells()]

    def num_parameters(self) -> int:
        return sum(a.size for _, a in self._tensors().items())

    # ---- native file ------------------------------------------------------------
    def _meta(self) -> dict:
        def act_list(d):
            return [[a.name, a.alpha, a.beta] for a in d.activations]

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "layout": self.layout,
            "layers": [{
                "direction": layer.direction,
                "clip": layer.clip,
                "input_forget": layer.input_forget,
                "directions": [{"activations": act_list(d)} for d in layer.directions],
            } for layer in self.layers],
            "embedding": self.embedding is not None,
            "head": None if self.head is None else {"activation": self.head.activation},
        }

    def _tensors(self) -> dict:
        t = {}
        for li, layer in enumerate(self.layers):
            for di, d in enumerate(layer.directions):
                p = f"layers.{li}.{di}."
                t[p + "W"], t[p + "R"], t[p + "b"] = d.W, d.R, d.b
                if d.peepholes is not None:
                    t[p + "peepholes"] = d.peepholes
                if d.proj is not None:
                    t[p + "proj"] = d.proj
        if self.embedding is not None:
            t["embedding.weight"] = self.embedding.weight
        if self.head is not None:
            t["head.weight"] = self.head.weight
            if self.head.bias is not None:
                t["head.bias"] = self.head.bias
        return t

    def fingerprint(self) -> str:
        """sha256 of configuration and weights: equal models have equal fingerprints."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self._meta(), sort_keys=True).encode())
            for k, v in sorted(self._tensors().items()):
                h.update(k.encode())
                h.update(str(v.shape).encode())
                h.update(v.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def save(self, path) -> None:
        """Write the native file: safetensors tensors, JSON configuration in its header."""
        from safetensors.numpy import save_file

        save_file(self._tensors(), os.fspath(path), metadata={FORMAT: json.dumps(self._meta())})

    @classmethod
    def load(cls, path) -> Model:
        """Read a file written by `save`; anything else gives ModelError."""
        path = os.fspath(path)
        tensors, meta = read_safetensors(path)
        header = meta.get(FORMAT)
        if header is None:
            raise ModelError(f"{path}: a safetensors file without lstm-engine metadata "
                             "(for PyTorch weights use converters.from_torch)")
        try:
            return cls._from_meta(header, tensors)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None

    @classmethod
    def _from_meta(cls, header, tensors):
        try:
            meta = json.loads(header)
        except (ValueError, TypeError, RecursionError) as e:  # ValueError: also ints of 5000 digits
            raise ModelError(f"damaged metadata ({str(e)[:200]})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError("metadata is not lstm-engine's")
        if meta.get("version") != FORMAT_VERSION:
            raise ModelError(f"file format version {brief.repr(meta.get('version'))}; this "
                             f"lstm-engine reads version {FORMAT_VERSION}")

        def get(key, required=True):
            if key not in tensors:
                if required:
                    raise ModelError(f"missing tensor {key!r}")
                return None
            return tensors[key]

        layers = []
        for li, lm in enumerate(_member(meta, "layers", list, "metadata")):
            where = f"layers[{li}]"
            dirs = []
            for di, dm in enumerate(_member(lm, "directions", list, where)):
                p, dw = f"layers.{li}.{di}.", f"{where}.directions[{di}]"
                dirs.append(Direction(
                    W=get(p + "W"), R=get(p + "R"), b=get(p + "b"),
                    peepholes=get(p + "peepholes", False), proj=get(p + "proj", False),
                    activations=_activations(_member(dm, "activations", list, dw), dw)))
            # values of any type: Model validation names what is wrong with them
            layers.append(Layer(dirs, *(_member(lm, k, object, where) for k in ("direction", "clip", "input_forget"))))
        emb = Embedding(get("embedding.weight")) if _member(meta, "embedding", bool, "metadata") else None
        hm = _member(meta, "head", (dict, type(None)), "metadata")
        head = None if hm is None else Head(get("head.weight"), get("head.bias", False),
                                            _member(hm, "activation", object, "head"))
        return cls(layers, emb, head, _member(meta, "layout", object, "metadata"))


def _member(obj, key, kinds, where):
    """obj[key] from a native file's metadata, of one of `kinds`: a file may hold any JSON
    anywhere, and a ModelError names the field instead of a KeyError or TypeError."""
    if not isinstance(obj, dict):
        raise ModelError(f"damaged metadata: {where} is a {type(obj).__name__}, not an object")
    if key not in obj:
        raise ModelError(f"damaged metadata: {where} has no {key!r}")
    if not isinstance(obj[key], kinds):
        raise ModelError(f"damaged metadata: {where}.{key} is a {type(obj[key]).__name__}")
    return obj[key]


def _activations(spec, where) -> tuple:
    """(f, g, h) from a native file's [[name, alpha, beta], ...]."""
    for k, item in enumerate(spec):
        if not (isinstance(item, list) and len(item) == 3):
            raise ModelError(f"damaged metadata: {where}.activations[{k}] is {brief.repr(item)}, "
                             "not [name, alpha, beta]")
    try:
        return tuple(acts.make(n, a, b) for n, a, b in spec)
    except KeyError as e:
        raise ModelError(f"{where}.activations: unknown activation {brief.repr(e.args[0])}; "
                         f"supported: {', '.join(acts.NAMES)}") from None
    except (TypeError, ValueError) as e:
        raise ModelError(f"{where}.activations: {e}") from None
