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
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib

import numpy as np

from lstm_engine.errors import ModelError
from lstm_engine.files import bf16_to_f32, brief, open_regular, read_safetensors
from lstm_engine.model import HEAD_ACTIVATIONS, TORCH_TO_ONNX, Direction, Embedding, Head, Layer, Model, permute_gates

from .budget import Budget

_LSTM_KEY = re.compile(r"^(.*?)(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l(\d+)(_reverse)?)?$")


# ---- reading files ------------------------------------------------------------------
class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
             "BFloat16Storage": "bf16"}


def _numel(size) -> int:
    return int(np.prod(size, dtype=object))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a checkpoint of tensors needs; anything else is refused.

    Each storage is read once, however many tensors view it, and each tensor rebuilt
    from it is counted against the import's budget before it is made.
    """

    def __init__(self, f, zf, prefix, budget):
        super().__init__(f)
        self._zf, self._prefix, self._budget = zf, prefix, budget
        self._storages = {}  # key -> (dtype, array)

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        raise ModelError(f"checkpoint refers to {module}.{name}, which a file of tensors never needs; "
                         "refused without running it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str) and re.fullmatch(r"\w+", pid[2])):
            raise ModelError(f"checkpoint has an unexpected storage record {brief.repr(pid)}")
        dtype, key = pid[1].dtype, pid[2]
        if key not in self._storages:
            self._storages[key] = dtype, self._read_storage(key, dtype)
        if self._storages[key][0] != dtype:
            raise ModelError(f"checkpoint storage {key!r} is used with two dtypes")
        return self._storages[key][1]

    def _read_storage(self, key, dtype) -> np.ndarray:
        try:
            raw = self._zf.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise ModelError(f"checkpoint storage {key!r} is missing (truncated file?)") from None
        if dtype == "bf16":
            arr = bf16_to_f32(np.frombuffer(raw[:len(raw) // 2 * 2], np.uint16))
        else:
            item = np.dtype(dtype).itemsize
            arr = np.frombuffer(raw[:len(raw) // item * item], dtype)
        self._budget.hold(arr.size, key=key)
        return arr

    def _rebuild_tensor(self, storage, offset, size, stride, *_):
        if not (isinstance(storage, np.ndarray) and _is_count(offset) and isinstance(size, (tuple, list))
                and isinstance(stride, (tuple, list)) and len(size) == len(stride) <= 64
                and all(_is_count(n) for n in (*size, *stride))):
            raise ModelError(f"damaged tensor record in checkpoint (offset {brief.repr(offset)}, size "
                             f"{brief.repr(size)}, stride {brief.repr(stride)}: expected counts)")
        size, stride = tuple(size), tuple(stride)
        if size and min(size) > 0:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.size:
                raise ModelError("tensor reaches past its storage (truncated or damaged checkpoint)")
        elif offset > storage.size:
            raise ModelError("damaged tensor record in checkpoint")
        self._budget.spend(_numel(size), f"a checkpoint tensor of shape {brief.repr(size)}")
        item = storage.itemsize
        return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride)).copy()


def _is_count(v) -> bool:
    """A non-negative int from a pickle (not a bool, a float or a string)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _rebuild_parameter(data, *_):
    return data


def _read_zip_checkpoint(f, where, budget) -> object:
    """The object pickled in a zip checkpoint (an open file), without torch."""
    try:
        zf = zipfile.ZipFile(f)
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ModelError(f"{where}: a zip file, but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0][:-len("data.pkl")]
        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), zf, prefix, budget).load()
    except ModelError:
        raise
    # MemoryError: pickle opcodes that claim a terabyte-long string fail to allocate it
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, struct.error, OSError, NotImplementedError, RuntimeError,
            zlib.error, MemoryError, RecursionError) as e:
        raise ModelError(f"{where}: damaged PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


_ZIP_EXPANSION = 8  # a checkpoint's members may claim this many times the file's bytes (+ 1 MB)


def _check_zip_sizes(f, where):
    """Refuse an archive whose members claim far more bytes than the file holds (a zip
    bomb), before anything is decompressed: torch.save stores members uncompressed, so a
    real checkpoint claims about its own size."""
    try:
        with zipfile.ZipFile(f) as zf:
            claimed = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelError(f"{where}: damaged PyTorch checkpoint ({type(e).__name__}: {e})") from None
    size = os.fstat(f.fileno()).st_size
    if claimed > _ZIP_EXPANSION * size + (1 << 20):
        raise ModelError(f"{where}: its members claim {claimed} bytes from a {size}-byte file; refused "
                         "(torch.save stores them uncompressed)")


def _read_checkpoint(f, where, budget):
    """The object in a .pt/.pth file (open): torch.load(weights_only=True), or without
    torch the restricted reader, whose tensors are counted against `budget` as made."""
    try:
        import torch
    except ImportError:
        torch = None
    is_zip = zipfile.is_zipfile(f)
    f.seek(0)
    if is_zip:
        _check_zip_sizes(f, where)
        f.seek(0)
    if torch is None:
        if not is_zip:
            raise ModelError(f"{where}: legacy (non-zip) PyTorch format; reading it needs torch installed "
                             "(or re-save it with a current torch.save)")
        return _read_zip_checkpoint(f, where, budget)
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals, truncation, wrong files
        raise ModelError(f"{where}: not loadable as plain tensors ({type(e).__name__}: {str(e)[:300]})") from None


def _tensors(obj, where, budget) -> dict:
    """{name: array} from a state dict (torch tensors or numpy), or a checkpoint dict that
    holds one under 'state_dict' / 'model' / similar."""
    if not isinstance(obj, dict):
        raise ModelError(f"{where}: expected a state dict, got {type(obj).__name__}")
    if not any(_is_array(v) for v in obj.values()):
        nested = [k for k, v in obj.items() if isinstance(v, dict) and any(_is_array(x) for x in v.values())]
        if len(nested) == 1:
            return _tensors(obj[nested[0]], where, budget)
        raise ModelError(f"{where}: no tensors found" + (f"; candidate sub-dicts: {nested}" if nested else ""))
    made, out = {}, {}  # made: id -> array, so that a tensor under two keys (tied weights) is made once
    for k, v in obj.items():
        if _is_array(v):
            if id(v) not in made:
                made[id(v)] = _as_array(v, f"{where}: tensor {k!r}", budget)
            out[str(k)] = made[id(v)]
    return out


def _is_array(v):
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _as_array(v, what, budget):
    """v as a dense numpy array (float32 if it is floating point), counted against the
    budget first: a torch view may repeat its storage (stride 0) into far more elements
    than the file holds. A sparse, quantized or meta-device tensor gives ModelError."""
    if isinstance(v, np.ndarray):
        return v
    try:
        storage = v.untyped_storage()
        budget.hold(storage.nbytes() // v.element_size(), key=("torch", storage.data_ptr()))
        budget.spend(v.numel(), what)
        t = v.detach().cpu()
        return np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.numpy())
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
        used.add(f"{embedding.rstrip('.')}.weight")
    hd = None
    if head is not None:
        h = head.rstrip(".")
        bias = _get(t, f"{h}.bias", 1, where) if f"{h}.bias" in t else None
        hd = Head(_get(t, f"{h}.weight", 2, where), bias, head_activation)
        used.update({f"{h}.weight", f"{h}.bias"})
    elif head_activation is not None:
        raise ModelError("head_activation needs head=<prefix of the nn.Linear>")
    if head_activation not in HEAD_ACTIVATIONS:
        raise ModelError(f"head_activation {head_activation!r} is not one of {HEAD_ACTIVATIONS}")
    _warn_unused(t, used, layers, where)
    try:
        return Model(layers, emb, hd, 1 if batch_first else 0)
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None


def _warn_unused(t, used, layers, where):
    """Name the tensors the model leaves out, and the option that would take each module
    in: a state dict of Embedding + LSTM + Linear must not pass for a bare LSTM unnoticed.
    A warning, not an error: taking one LSTM out of a bigger network is a fair use."""
    unused = [k for k in t if k not in used]
    if not unused:
        return
    hints = []
    for mod in dict.fromkeys(k.rpartition(".")[0] for k in unused if k.endswith(".weight")):
        w = np.asarray(t[f"{mod}.weight"])
        if w.ndim == 2 and w.shape[1] == layers[0].input_size and f"{mod}.bias" not in t:
            hints.append(f"embedding={mod!r}")
        elif w.ndim == 2 and w.shape[1] == layers[-1].output_size:
            hints.append(f"head={mod!r}")
    warnings.warn(f"{where}: tensors not used by the model: {unused[:10]}{' ...' if len(unused) > 10 else ''}"
                  + (f"; from_torch(..., {', '.join(hints)}) would use them" if hints else ""), stacklevel=4)


def from_torch(src, prefix=None, head=None, embedding=None, head_activation=None,
               batch_first=False) -> Model:
    """PyTorch weights as an lstm_engine.Model.

    src: a state dict (torch tensors or numpy arrays), or a .pt/.pth/.safetensors path.
    prefix: module prefix of the nn.LSTM / nn.LSTMCell (found when there is one).
    head, embedding: prefixes of an nn.Linear on top / an nn.Embedding in front.
    head_activation: None, "Softmax", "LogSoftmax", "Sigmoid", "Tanh" or "Relu".
    batch_first: as the nn.LSTM was built (it is not stored in the weights).
    """
    budget = Budget()
    if isinstance(src, dict):
        where, obj = "state dict", src
    else:
        where = os.fspath(src)
        if where.lower().endswith(".safetensors"):
            obj = read_safetensors(where)[0]
        else:
            with open_regular(where) as f:
                obj = _read_checkpoint(f, where, budget)
    return _state_dict_to_model(_tensors(obj, where, budget), prefix, head, embedding, head_activation,
                                batch_first, where)
