"""PyTorch weights -> `Model`: state dicts, .pt/.pth checkpoints, .safetensors files.

Nothing from a file ever runs (DESIGN §7). With torch installed, checkpoints load
through `torch.load(weights_only=True)`. Without torch, a restricted reader rebuilds
tensors from the zip format and refuses every pickle global but the handful that
describe tensors; the legacy (non-zip) format needs torch.

Key layout (PyTorch): {prefix}weight_ih_l{k}[_reverse] (4H, I), weight_hh_l{k} (4H, P),
bias_ih_l{k}, bias_hh_l{k} (4H,), weight_hr_l{k} (P, H) with proj_size; nn.LSTMCell:
{prefix}weight_ih, weight_hh, bias_ih, bias_hh. Gates are stored i, f, g, o.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
import zlib

import numpy as np

from lstm_engine.errors import ModelError
from lstm_engine.model import HEAD_ACTIVATIONS, TORCH_TO_ONNX, Direction, Embedding, Head, Layer, Model, permute_gates

_LSTM_KEY = re.compile(r"^(.*?)(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l(\d+)(_reverse)?)?$")


# ---- reading files ------------------------------------------------------------------
_SAFE_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bf16",
                "I64": np.int64, "I32": np.int32}


def _bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: they are the upper half of the float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _count(v) -> int:
    """A size or offset from a JSON header: a non-negative integer (not a bool, not a float)."""
    if type(v) is not int or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return v


def read_safetensors(path) -> dict:
    """A .safetensors file as {name: float32 array}; checks every offset against the file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        (n,) = struct.unpack_from("<Q", data)
        if n > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = _SAFE_DTYPES[info["dtype"]]
            start, end = (_count(v) for v in info["data_offsets"])
            shape = tuple(_count(v) for v in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: tensor {name!r}: unsupported dtype or damaged entry {info!r:.200}") from None
        if not 0 <= start <= end <= len(body):
            raise ModelError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        itemsize = 2 if dt == "bf16" else np.dtype(dt).itemsize
        if (end - start) != itemsize * int(np.prod(shape)):
            raise ModelError(f"{path}: tensor {name!r}: {end - start} bytes do not hold shape {shape}")
        raw = np.frombuffer(body[start:end], np.uint16 if dt == "bf16" else dt)
        out[name] = (_bf16(raw) if dt == "bf16" else raw).reshape(shape)
    return out


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
             "BFloat16Storage": "bf16"}


_EXPANDED = 1 << 26  # bytes a tensor may hold beyond its storage (a view that repeats it)


def _check_expansion(nbytes, storage_bytes, what):
    """Refuse a tensor that repeats its storage into far more bytes than the file holds
    (stride 0): a few bytes must not unpack into gigabytes."""
    if nbytes > storage_bytes + _EXPANDED:
        raise ModelError(f"{what} holds {nbytes} bytes from a storage of {storage_bytes} (an expanded "
                         "view); refused, weights never need one")


def _rebuild_tensor(storage, offset, size, stride, *_):
    size, stride = tuple(size), tuple(stride)
    if not isinstance(storage, np.ndarray) or offset < 0 or any(s < 0 for s in size + stride):
        raise ModelError("damaged tensor record in checkpoint")
    _check_expansion(int(np.prod(size, dtype=object)) * storage.itemsize, storage.nbytes, "a checkpoint tensor")
    if size and min(size) > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise ModelError("tensor reaches past its storage (truncated or damaged checkpoint)")
    elif offset > storage.size:
        raise ModelError("damaged tensor record in checkpoint")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data, *_):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a checkpoint of tensors needs; anything else is refused."""

    def __init__(self, f, zf, prefix):
        super().__init__(f)
        self._zf, self._prefix = zf, prefix

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        raise ModelError(f"checkpoint refers to {module}.{name}, which a file of tensors never needs; "
                         "refused without running it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise ModelError(f"checkpoint has an unexpected storage record {pid!r:.80}")
        stype, key = pid[1], str(pid[2])
        if not re.fullmatch(r"\w+", key):
            raise ModelError(f"checkpoint storage key {key!r} is not a plain name")
        try:
            raw = self._zf.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise ModelError(f"checkpoint storage {key!r} is missing (truncated file?)") from None
        if stype.dtype == "bf16":
            return _bf16(np.frombuffer(raw[:len(raw) // 2 * 2], np.uint16))
        item = np.dtype(stype.dtype).itemsize
        return np.frombuffer(raw[:len(raw) // item * item], stype.dtype)


def _read_zip_checkpoint(path) -> object:
    try:
        zf = zipfile.ZipFile(path)
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ModelError(f"{path}: a zip file, but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0][:-len("data.pkl")]
        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), zf, prefix).load()
    except ModelError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, struct.error, OSError, NotImplementedError, RuntimeError,
            zlib.error) as e:
        raise ModelError(f"{path}: damaged PyTorch checkpoint ({type(e).__name__}: {e})") from None


_ZIP_EXPANSION = 8  # a checkpoint's members may claim this many times the file's bytes (+ 1 MB)


def _check_zip_sizes(path):
    """Refuse an archive whose members claim far more bytes than the file holds (a zip
    bomb), before anything is decompressed: torch.save stores members uncompressed, so a
    real checkpoint claims about its own size."""
    try:
        with zipfile.ZipFile(path) as zf:
            claimed = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelError(f"{path}: damaged PyTorch checkpoint ({type(e).__name__}: {e})") from None
    size = os.path.getsize(path)
    if claimed > _ZIP_EXPANSION * size + (1 << 20):
        raise ModelError(f"{path}: its members claim {claimed} bytes from a {size}-byte file; refused "
                         "(torch.save stores them uncompressed)")


def _read_checkpoint(path):
    try:
        import torch
    except ImportError:
        torch = None
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_sizes(path)
    if torch is None:
        if not is_zip:
            raise ModelError(f"{path}: legacy (non-zip) PyTorch format; reading it needs torch installed "
                             "(or re-save it with a current torch.save)")
        return _read_zip_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals, truncation, wrong files
        raise ModelError(f"{path}: not loadable as plain tensors ({type(e).__name__}: {str(e)[:300]})") from None


def _tensors(obj, where) -> dict:
    """{name: float32 array} from a state dict (torch tensors or numpy), or a checkpoint
    dict that holds one under 'state_dict' / 'model' / similar."""
    if not isinstance(obj, dict):
        raise ModelError(f"{where}: expected a state dict, got {type(obj).__name__}")
    if not any(_is_array(v) for v in obj.values()):
        nested = [k for k, v in obj.items() if isinstance(v, dict) and any(_is_array(x) for x in v.values())]
        if len(nested) == 1:
            return _tensors(obj[nested[0]], where)
        raise ModelError(f"{where}: no tensors found" + (f"; candidate sub-dicts: {nested}" if nested else ""))
    return {str(k): _as_array(v, f"{where}: tensor {k!r}") for k, v in obj.items() if _is_array(v)}


def _is_array(v):
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _as_array(v, what):
    """v as a numpy array (float32 if it is floating point). A torch tensor may be sparse,
    quantized, on the meta device, or a view that repeats its storage: ModelError then."""
    if isinstance(v, np.ndarray):
        return v
    try:
        _check_expansion(v.numel() * v.element_size(), v.untyped_storage().nbytes(), what)
        return v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{what} ({v.layout}, {v.dtype}, {v.device}) is not a dense array of numbers "
                         f"({type(e).__name__}); pass a state dict without it") from None


# ---- state dict -> Model ----------------------------------------------------------
def lstm_prefixes(tensors: dict) -> list:
    """Module prefixes that hold an nn.LSTM or nn.LSTMCell."""
    found = set()
    for k in tensors:
        m = _LSTM_KEY.match(k)
        if m and m.group(2) == "weight_ih" and (m.group(3) is None or m.group(4) == "0"):
            found.add(m.group(1))
    return sorted(found)


def _get(tensors, key, ndim, where):
    if key not in tensors:
        raise ModelError(f"{where}: missing key {key!r}")
    a = np.asarray(tensors[key])
    if a.ndim != ndim:
        raise ModelError(f"{where}: {key!r} has shape {a.shape}, expected {ndim}-D")
    return a.astype(np.float32)


def _state_dict_to_model(t, prefix, head, embedding, head_activation, batch_first, where):
    cands = lstm_prefixes(t)
    if prefix is None:
        if len(cands) != 1:
            raise ModelError(f"{where}: " + ("no nn.LSTM / nn.LSTMCell weights found (keys like "
                                             "'weight_ih_l0')" if not cands else
                                             f"several LSTMs: {cands}; pick one with prefix=..."))
        prefix = cands[0]
    elif prefix and not prefix.endswith("."):
        prefix += "."
    if prefix not in cands:
        raise ModelError(f"{where}: no LSTM under prefix {prefix!r}; found: {cands}")
    cell = f"{prefix}weight_ih" in t
    layers, used = [], set()
    k = 0
    while True:
        sfx = "" if cell else f"_l{k}"
        if f"{prefix}weight_ih{sfx}" not in t:
            break
        dirs = []
        for rev in ("", "_reverse"):
            p = f"{prefix}%s{sfx}{rev}"
            if rev and p % "weight_ih" not in t:
                break
            W = _get(t, p % "weight_ih", 2, where)
            R = _get(t, p % "weight_hh", 2, where)
            H = W.shape[0] // 4
            if W.shape[0] != 4 * H or R.shape[0] != 4 * H:
                raise ModelError(f"{where}: {p % 'weight_ih'!r} {W.shape} / {p % 'weight_hh'!r} {R.shape} "
                                 "are not (4*hidden, ...)")
            b = np.zeros(4 * H, np.float32)
            for name in ("bias_ih", "bias_hh"):
                if p % name in t:
                    bb = _get(t, p % name, 1, where)
                    if bb.shape != (4 * H,):
                        raise ModelError(f"{where}: {p % name!r} has shape {bb.shape}, expected ({4 * H},)")
                    b = b + bb
                    used.add(p % name)
            proj = _get(t, p % "weight_hr", 2, where) if p % "weight_hr" in t else None
            used.update(x for x in (p % "weight_ih", p % "weight_hh", p % "weight_hr") if x in t)
            dirs.append(Direction(*(permute_gates(a, H, TORCH_TO_ONNX) for a in (W, R, b)), proj=proj))
        layers.append(Layer(dirs, "bidirectional" if len(dirs) == 2 else "forward"))
        k += 1
        if cell:
            break
    stray = [x for x in t if x.startswith(prefix) and _LSTM_KEY.match(x) and x not in used]
    if stray:
        raise ModelError(f"{where}: LSTM keys that do not fit the layers found: {stray}")
    emb = None
    if embedding is not None:
        emb = Embedding(_get(t, f"{embedding.rstrip('.')}.weight", 2, where))
    hd = None
    if head is not None:
        h = head.rstrip(".")
        bias = _get(t, f"{h}.bias", 1, where) if f"{h}.bias" in t else None
        hd = Head(_get(t, f"{h}.weight", 2, where), bias, head_activation)
    elif head_activation is not None:
        raise ModelError("head_activation needs head=<prefix of the nn.Linear>")
    if head_activation not in HEAD_ACTIVATIONS:
        raise ModelError(f"head_activation {head_activation!r} is not one of {HEAD_ACTIVATIONS}")
    try:
        return Model(layers, emb, hd, 1 if batch_first else 0)
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None


def from_torch(src, prefix=None, head=None, embedding=None, head_activation=None,
               batch_first=False) -> Model:
    """PyTorch weights as an lstm_engine.Model.

    src: a state dict (torch tensors or numpy arrays), or a .pt/.pth/.safetensors path.
    prefix: module prefix of the nn.LSTM / nn.LSTMCell (found when there is one).
    head, embedding: prefixes of an nn.Linear on top / an nn.Embedding in front.
    head_activation: None, "Softmax", "LogSoftmax", "Sigmoid", "Tanh" or "Relu".
    batch_first: as the nn.LSTM was built (it is not stored in the weights).
    """
    if isinstance(src, dict):
        where, obj = "state dict", src
    else:
        where = os.fspath(src)
        if not os.path.isfile(where):
            raise ModelError(f"{where}: no such file")
        obj = read_safetensors(where) if where.lower().endswith(".safetensors") else _read_checkpoint(where)
    return _state_dict_to_model(_tensors(obj, where), prefix, head, embedding, head_activation,
                                batch_first, where)
