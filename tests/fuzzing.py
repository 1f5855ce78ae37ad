"""Structured mutation of model files, for the bounded fuzz tests (test_hostile_files.py)
and the long campaign (fuzz_campaign.py).

Byte flips mostly break a file's framing (protobuf, zip, JSON) and stop at the first
parser. These mutators keep the framing and lie in the structure instead: ONNX
attributes of the wrong type or with huge, negative, zero or NaN values, empty lists,
tensors of the wrong rank or dtype; native and safetensors metadata with swapped types
and impossible numbers; checkpoint tensor records with hostile offsets, sizes, strides,
storage keys and dtypes. A case is (format, seed): `case(fmt, seed, folder)` rebuilds it
exactly, `check(...)` loads it and says how it escaped, if it did.
"""
from __future__ import annotations

import copy
import io
import json
import math
import pickle
import struct
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lstm_engine as le
from converters import from_torch, to_onnx
from converters.budget import Budget
from converters.torch_import import _read_zip_checkpoint
from helpers import make_model

INTS = [0, -1, 1, 2, 3, 7, 64, 65, 2 ** 31, 2 ** 62, -2 ** 62]  # all fit ONNX's int64
FLOATS = [0.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 1e39, 1e-45, 3.4028235e38]
STRINGS = [b"", b"x", b"\xff\xfe", b"forward", b"reverse", b"bidirectional", b"LeakyRelu", b"Swish"]
JSON_VALUES = [None, True, False, "", "x", "1.5", [], {}, [[]], [None], {"": 0}, *INTS, 10 ** 30, 10 ** 400,
               *FLOATS, -10 ** 400, "F16", "BF16", "I64", "F64", "BOOL", "U8", "LeakyRelu", "bidirectional"]


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


# ---- ONNX ---------------------------------------------------------------------------
def glue_graph(rng) -> onnx.ModelProto:
    """Two stacked LSTMs wrapped in the glue exporters emit: state inputs cut by Slice and
    Split, Squeeze/Transpose/Reshape of Y, a MatMul+Add+LogSoftmax head, Concat of the
    final states. Imports as it is."""
    I, H, O = 3, 4, 5

    def w(*shape):
        return (rng.uniform(-0.5, 0.5, shape)).astype(np.float32)

    def i64(name, v):
        return numpy_helper.from_array(np.asarray(v, np.int64), name)

    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("W1", w(1, 4 * H, I)), ("R1", w(1, 4 * H, H)), ("B1", w(1, 8 * H)),
        ("W2", w(1, 4 * H, H)), ("R2", w(1, 4 * H, H)), ("B2", w(1, 8 * H)), ("Wh", w(H, O)), ("bh", w(O))]]
    inits += [i64("s0", [0]), i64("s1", [1]), i64("s2", [2]), i64("ax0", [0]), i64("ax1", [1]),
              i64("sp", [1, 1]), i64("flat", [0, 0, -1])]
    n = helper.make_node
    nodes = [n("Slice", ["h0", "s0", "s1", "ax0"], ["h0a"]), n("Slice", ["h0", "s1", "s2", "ax0"], ["h0b"]),
             n("Split", ["c0", "sp"], ["c0a", "c0b"], axis=0),
             n("LSTM", ["x", "W1", "R1", "B1", "", "h0a", "c0a"], ["Y1", "Yh1", "Yc1"], hidden_size=H),
             n("Squeeze", ["Y1", "ax1"], ["y1"]),
             n("LSTM", ["y1", "W2", "R2", "B2", "", "h0b", "c0b"], ["Y2", "Yh2", "Yc2"], hidden_size=H),
             n("Transpose", ["Y2"], ["Y2t"], perm=[0, 2, 1, 3]), n("Reshape", ["Y2t", "flat"], ["y2"]),
             n("MatMul", ["y2", "Wh"], ["z"]), n("Add", ["z", "bh"], ["z2"]),
             n("LogSoftmax", ["z2"], ["out"], axis=-1),
             n("Concat", ["Yh1", "Yh2"], ["hn"], axis=0), n("Concat", ["Yc1", "Yc2"], ["cn"], axis=0)]
    f = TensorProto.FLOAT
    g = helper.make_graph(nodes, "glue", [helper.make_tensor_value_info("x", f, ["T", "B", I]),
                                          helper.make_tensor_value_info("h0", f, [2, "B", H]),
                                          helper.make_tensor_value_info("c0", f, [2, "B", H])],
                          [helper.make_tensor_value_info(o, f, None) for o in ("out", "hn", "cn")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def as_constant_nodes(m: onnx.ModelProto) -> onnx.ModelProto:
    """m with its initializers moved into Constant nodes (how some exporters store weights)."""
    m = copy.deepcopy(m)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def onnx_bases(rng) -> list:
    """Valid models: the glue graph (also with Constant nodes) and to_onnx exports covering
    every LSTM option."""
    glue = glue_graph(rng)
    return [glue, as_constant_nodes(glue),
            to_onnx(make_model(rng, 4, (6, 5), head=3, head_act="Softmax", peep=True, clip=2.0),
                    with_state=True, with_lengths=True),
            to_onnx(make_model(rng, 3, (5,), direction="bidirectional", vocab=7, layout=1,
                               activations=(le.activations.make("LeakyRelu", 0.1),
                                            le.activations.make("ScaledTanh", 0.8, 1.2), le.activations.TANH)))]


def random_attribute(rng, name: str) -> onnx.AttributeProto:
    """An attribute called `name`, of a random type, with a hostile value."""
    kind = int(rng.integers(7))
    if kind == 0:
        return helper.make_attribute(name, pick(rng, INTS))
    if kind == 1:
        return helper.make_attribute(name, pick(rng, FLOATS))
    if kind == 2:
        return helper.make_attribute(name, pick(rng, STRINGS))
    if kind == 3:
        values = [pick(rng, INTS) for _ in range(int(rng.integers(0, 6)))]
        return helper.make_attribute(name, values, attr_type=onnx.AttributeProto.INTS)
    if kind == 4:
        return helper.make_attribute(name, [pick(rng, FLOATS) for _ in range(int(rng.integers(0, 7)))],
                                     attr_type=onnx.AttributeProto.FLOATS)
    if kind == 5:
        return helper.make_attribute(name, [pick(rng, STRINGS) for _ in range(int(rng.integers(0, 7)))],
                                     attr_type=onnx.AttributeProto.STRINGS)
    return helper.make_attribute(name, random_tensor(rng))


def random_tensor(rng) -> onnx.TensorProto:
    """A small tensor of a random dtype and rank, sometimes with NaN or hostile ints."""
    rank = int(rng.integers(0, 4))
    shape = tuple(int(rng.integers(0, 4)) for _ in range(rank))
    dtype = pick(rng, [np.float32, np.float64, np.int64, np.int32, np.float16, np.bool_, np.uint8])
    a = rng.uniform(-3, 3, shape).astype(dtype)
    if a.size and a.dtype.kind == "f" and rng.random() < 0.5:
        a.flat[int(rng.integers(a.size))] = pick(rng, [np.nan, np.inf, -np.inf])
    if a.size and a.dtype == np.int64 and rng.random() < 0.5:
        a.flat[int(rng.integers(a.size))] = pick(rng, [-1, 0, 2 ** 62, -2 ** 62, 2 ** 31])
    return numpy_helper.from_array(a, "t")


def _all_tensors(g: onnx.GraphProto) -> list:
    return list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]


def _mutate_attribute(rng, m):
    node = pick(rng, m.graph.node)
    action = int(rng.integers(4))
    if action == 0 and node.attribute:  # a hostile value, maybe of another type
        k = int(rng.integers(len(node.attribute)))
        node.attribute[k].CopyFrom(random_attribute(rng, node.attribute[k].name))
        return f"{node.op_type}.{node.attribute[k].name} := {_brief(node.attribute[k])}"
    if action == 1 and node.attribute:
        k = int(rng.integers(len(node.attribute)))
        name = node.attribute[k].name
        del node.attribute[k]
        return f"{node.op_type}: drop {name}"
    schema_attrs = _schema_attrs(node, m)
    name = pick(rng, schema_attrs) if schema_attrs and action == 2 else pick(rng, ["axis", "perm", "axes", "foo"])
    for k in range(len(node.attribute) - 1, -1, -1):
        if node.attribute[k].name == name:
            del node.attribute[k]
    node.attribute.append(random_attribute(rng, name))
    return f"{node.op_type}.{name} += {_brief(node.attribute[-1])}"


def _schema_attrs(node, m) -> list:
    try:
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 1)
        return sorted(onnx.defs.get_schema(node.op_type, opset, node.domain).attributes)
    except Exception:  # an op or opset the mutations made up
        return []


def _brief(attr) -> str:
    return str(helper.get_attribute_value(attr))[:60]


def _mutate_tensor(rng, m):
    tensors = _all_tensors(m.graph)
    t = pick(rng, tensors)
    action = int(rng.integers(5))
    if action == 0:
        dims = list(t.dims)
        choice = int(rng.integers(4))
        if choice == 0 and dims:
            dims[int(rng.integers(len(dims)))] = pick(rng, [0, -1, 2 ** 40, 1])
        elif choice == 1:
            dims.append(pick(rng, [1, 2, 0]))
        elif choice == 2:
            dims = dims[:-1]
        else:
            dims = []
        del t.dims[:]
        t.dims.extend(dims)
        return f"tensor {t.name}: dims {dims}"
    if action == 1:
        t.data_type = pick(rng, [TensorProto.STRING, TensorProto.INT64, TensorProto.DOUBLE, TensorProto.BOOL,
                                 TensorProto.UNDEFINED, TensorProto.INT4, TensorProto.FLOAT16, 999])
        return f"tensor {t.name}: data_type {t.data_type}"
    if action == 2:
        t.CopyFrom(_with_values(rng, t))
        return f"tensor {t.name}: hostile values"
    if action == 3:
        t.raw_data = t.raw_data[:int(rng.integers(len(t.raw_data) + 1))] if t.raw_data else b"\x00" * 3
        return f"tensor {t.name}: raw_data cut"
    t.CopyFrom(random_tensor(rng))
    return f"tensor replaced by {t.dims} of type {t.data_type}"


def _with_values(rng, t) -> onnx.TensorProto:
    try:
        a = numpy_helper.to_array(t).copy()
    except Exception:  # already damaged by an earlier mutation
        return t
    if a.size:
        bad = pick(rng, [np.nan, np.inf, 1e39]) if a.dtype.kind == "f" else pick(rng, [-1, 0, 2 ** 62, -2 ** 62])
        with np.errstate(all="ignore"):  # wraps around in small integer types, as a file could
            a.flat[int(rng.integers(a.size))] = np.array(bad).astype(a.dtype)
    return numpy_helper.from_array(a, t.name)


def _mutate_input(rng, m):
    vi = pick(rng, list(m.graph.input))
    tt = vi.type.tensor_type
    if rng.random() < 0.3:
        tt.elem_type = pick(rng, [TensorProto.INT64, TensorProto.STRING, TensorProto.DOUBLE, 0])
        return f"input {vi.name}: elem_type {tt.elem_type}"
    dims = tt.shape.dim
    if dims and rng.random() < 0.7:
        d = dims[int(rng.integers(len(dims)))]
        d.dim_value = pick(rng, [0, 1, 2, 10 ** 12, 2 ** 62])
        return f"input {vi.name}: a dim := {d.dim_value}"
    dims.add().dim_value = 1
    return f"input {vi.name}: one more dim"


def _mutate_node(rng, m):
    node = pick(rng, m.graph.node)
    action = int(rng.integers(4))
    if action == 0:
        old, node.op_type = node.op_type, pick(rng, ["Transpose", "Squeeze", "Unsqueeze", "Reshape", "Concat",
                                                      "Split", "Slice", "Gather", "Identity", "Expand",
                                                      "ConstantOfShape", "Shape", "Cast", "Softmax", "MatMul"])
        return f"node {old} -> {node.op_type}"
    names = [v.name for v in m.graph.input] + [t.name for t in m.graph.initializer] + \
            [o for n in m.graph.node for o in n.output]
    if action == 1 and node.input:
        k = int(rng.integers(len(node.input)))
        node.input[k] = pick(rng, names + [""])
        return f"{node.op_type} input {k} := {node.input[k]!r}"
    if action == 2:
        node.input.append(pick(rng, names))
        return f"{node.op_type}: one more input"
    if rng.random() < 0.5:
        out = pick(rng, list(m.graph.output))
        out.name = pick(rng, names)
        return f"graph output := {out.name!r}"
    m.opset_import[0].version = int(rng.integers(1, 25))
    return f"opset {m.opset_import[0].version}"


ONNX_MUTATORS = (_mutate_attribute, _mutate_attribute, _mutate_tensor, _mutate_input, _mutate_node)


def onnx_case(rng, bases) -> tuple:
    """({file name: bytes}, what was changed): one to three structured mutations of a base."""
    m = copy.deepcopy(pick(rng, bases))
    how = [pick(rng, ONNX_MUTATORS)(rng, m) for _ in range(int(rng.integers(1, 4)))]
    return {"m.onnx": m.SerializeToString()}, how


def external_base(m: onnx.ModelProto) -> tuple:
    """(model, w.bin): m with every initializer's data moved into w.bin."""
    m = copy.deepcopy(m)
    blob = io.BytesIO()
    for t in m.graph.initializer:
        raw = numpy_helper.to_array(t).tobytes()
        offset = blob.tell()
        blob.write(raw)
        t.ClearField("raw_data")
        for field in ("float_data", "int64_data", "int32_data", "double_data"):
            t.ClearField(field)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "w.bin"), ("offset", str(offset)), ("length", str(len(raw)))):
            t.external_data.add(key=k, value=v)
    return m, blob.getvalue()


LOCATIONS = ["", "../w.bin", "/etc/hostname", "w.bin\x00", "sub/../w.bin", "w.bin/", ".", "m.onnx", "W.BIN",
             "./w.bin", "w.bin" + "/." * 3, "\\..\\w.bin", "x" * 300]
COUNTS = ["-1", "1e3", "99999999999999999999", "0x10", " 1", "", "\u0661\u0662", "1_0", "0", "7", str(2 ** 64)]


def external_case(rng, base) -> tuple:
    """A model with external data whose entries (location, offset, length), data location
    or w.bin carry hostile values."""
    m, blob = copy.deepcopy(base[0]), base[1]
    t = pick(rng, list(m.graph.initializer))
    action = int(rng.integers(5))
    if action <= 1:
        e = pick(rng, list(t.external_data))
        e.value = pick(rng, LOCATIONS if e.key == "location" else COUNTS)
        how = f"{t.name}.{e.key} := {e.value[:40]!r}"
    elif action == 2:
        t.external_data.add(key=pick(rng, ["location", "offset", "length", "checksum", ""]), value=pick(rng, COUNTS))
        how = f"{t.name}: extra entry {t.external_data[-1].key}"
    elif action == 3:
        t.data_location = TensorProto.DEFAULT if rng.random() < 0.5 else TensorProto.EXTERNAL
        del t.external_data[:int(rng.integers(len(t.external_data) + 1))]
        how = f"{t.name}: data_location {t.data_location}, {len(t.external_data)} entries"
    else:
        blob = blob[:int(rng.integers(len(blob) + 1))]
        how = f"w.bin cut to {len(blob)} bytes"
    return {"m.onnx": m.SerializeToString(), "w.bin": blob}, [how]


# ---- JSON (native metadata, safetensors headers) -----------------------------------------
def _paths(obj, path=()):
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*path, k))


def mutate_json(rng, obj):
    """obj with one random member (at any depth) replaced, dropped, emptied or nested."""
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))[1:]
    if not paths:
        return pick(rng, JSON_VALUES), "root replaced"
    path = pick(rng, paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    key, action = path[-1], int(rng.integers(4))
    if action == 0:
        parent[key] = copy.deepcopy(pick(rng, JSON_VALUES))
    elif action == 1 and isinstance(parent, dict):
        del parent[key]
    elif action == 2:
        parent[key] = [parent[key]] * int(rng.integers(0, 3))
    else:
        parent[key] = {"x": parent[key]} if rng.random() < 0.5 else str(parent[key])
    return obj, f"{'/'.join(map(str, path))}: {('replaced', 'dropped', 'listed', 'wrapped')[action]}"


def _json_dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True)


def native_case(rng, model) -> tuple:
    """A native file whose metadata or safetensors header went through mutate_json."""
    from safetensors.numpy import save

    meta = model._meta()
    data = save(model._tensors(), metadata={"lstm-engine": _json_dumps(meta)})
    if rng.random() < 0.6:
        meta, how = mutate_json(rng, meta)
        return {"m.lstm": save(model._tensors(), metadata={"lstm-engine": _json_dumps(meta)})}, [f"meta {how}"]
    return _mutate_safetensors_header(rng, data, "m.lstm")


def _mutate_safetensors_header(rng, data: bytes, name) -> tuple:
    (n,) = struct.unpack_from("<Q", data)
    header, how = mutate_json(rng, json.loads(data[8:8 + n]))
    h = _json_dumps(header).encode()
    return {name: struct.pack("<Q", len(h)) + h + data[8 + n:]}, [f"header {how}"]


def safetensors_case(rng, tensors: dict) -> tuple:
    from safetensors.numpy import save

    return _mutate_safetensors_header(rng, save(tensors), "m.safetensors")


# ---- checkpoints (zip + pickle, as torch.save writes them) ----------------------------
# Stand-ins pickled under torch's names: GLOBAL opcodes are plain text in protocol 2, so
# the module name is swapped after pickling (pickle itself checks that a global exists).
class FloatStorage:
    pass


class HalfStorage:
    pass


class LongStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: stands in for torch._utils._rebuild_tensor_v2")


_STORAGE_CLASSES = {"float32": FloatStorage, "float16": HalfStorage, "int64": LongStorage}
_SWAP = [(b"c%s\n_rebuild_tensor_v2\n" % __name__.encode(), b"ctorch._utils\n_rebuild_tensor_v2\n")] + \
        [(b"c%s\n%s\n" % (__name__.encode(), c.__name__.encode()), b"ctorch\n%s\n" % c.__name__.encode())
         for c in _STORAGE_CLASSES.values()]


class _Tensor:
    def __init__(self, rec):
        self.rec = rec

    def __reduce__(self):
        r = self.rec
        return _rebuild_tensor_v2, (_Pid(r), r["offset"], r["size"], r["stride"], False, {})


class _Pid:
    def __init__(self, rec):
        self.rec = rec


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Pid):
            r = obj.rec
            return ("storage", _STORAGE_CLASSES.get(r["dtype"], FloatStorage), r["key"], "cpu", r["numel"])
        return None


def checkpoint_bytes(records: dict, storages: dict) -> bytes:
    """A zip checkpoint: records {name: tensor record} pickled as torch does, storages
    {key: bytes} as its data members."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({k: _Tensor(r) if isinstance(r, dict) and "key" in r else r
                                    for k, r in records.items()})
    pkl = buf.getvalue()
    for a, b in _SWAP:
        pkl = pkl.replace(a, b)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return out.getvalue()


def lstm_records(rng, I=3, H=4):
    """Records and storages of an nn.LSTM(I, H) state dict, one storage per tensor."""
    shapes = {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H), "bias_ih_l0": (4 * H,), "bias_hh_l0": (4 * H,)}
    records, storages = {}, {}
    for k, (name, shape) in enumerate(shapes.items()):
        a = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        stride = (shape[1], 1) if len(shape) == 2 else (1,)
        records[name] = {"key": str(k), "dtype": "float32", "offset": 0, "size": shape, "stride": stride,
                         "numel": a.size}
        storages[str(k)] = a.tobytes()
    return records, storages


def checkpoint_case(rng, base) -> tuple:
    """A checkpoint whose tensor records (offset, size, stride, key, dtype), storages or
    dict structure carry hostile values."""
    records, storages = copy.deepcopy(base)
    name = pick(rng, list(records))
    rec, action = records[name], int(rng.integers(6))
    if action <= 2:
        field = pick(rng, ["offset", "size", "stride", "numel", "key", "dtype"])
        rec[field] = _hostile_record_value(rng, field, rec[field])
        how = f"{name}.{field} := {str(rec[field])[:60]}"
    elif action == 3:
        key = rec["key"]
        storages[key] = storages[key][:int(rng.integers(len(storages[key]) + 1))]
        how = f"storage {key} cut to {len(storages[key])} bytes"
    elif action == 4:
        records[pick(rng, [f"{name}_view{k}" for k in range(3)])] = dict(rec, offset=int(rng.integers(0, 8)))
        how = f"{name}: one more view"
    else:
        records = {pick(rng, [0, None, "x", (1,)]): records} if rng.random() < 0.5 else \
            {**records, "extra": pick(rng, JSON_VALUES)}
        how = "dict structure"
    return {"m.pt": checkpoint_bytes(records, storages)}, [how]


def _hostile_record_value(rng, field, current):
    if field in ("size", "stride"):
        options = [(), (0,), (-1,), (2 ** 40,), (2 ** 62, 2 ** 62), (1.5,), ("4",), None, 7,
                   tuple(current) + (1,), tuple(current)[:-1], (0,) * len(current), (2 ** 20,) * len(current)]
        return pick(rng, options)
    if field in ("offset", "numel"):
        return pick(rng, [-1, 2 ** 62, 1.5, "0", None, 10 ** 30, 1, 3])
    if field == "key":
        return pick(rng, ["../x", "", "missing", 0, None, "a" * 300, "0/../1"])
    return pick(rng, ["float16", "int64", "other"])


# ---- running a case ------------------------------------------------------------------
FORMATS = ("onnx", "onnx-external", "native", "checkpoint", "checkpoint-restricted", "safetensors")


class Cases:
    """The valid bases, built once; `make(fmt, seed)` is one mutated case: the files
    ({name: bytes}, the model's own first) and what the mutation changed."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.onnx = onnx_bases(rng)
        self.external = external_base(self.onnx[0])
        self.native = make_model(rng, 4, (6, 5), direction=["bidirectional", "forward"], peep=True, clip=3.0,
                                 head=3, head_act="Sigmoid",
                                 activations=(le.activations.make("HardSigmoid", 0.3, 0.4), le.activations.TANH,
                                              le.activations.make("Elu", 0.7)))
        self.checkpoint = lstm_records(rng)
        self.safetensors = {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in
                            {"weight_ih_l0": (16, 3), "weight_hh_l0": (16, 4), "bias_ih_l0": (16,)}.items()}

    def make(self, fmt, seed) -> tuple:
        rng = np.random.default_rng(seed)
        if fmt == "onnx":
            return onnx_case(rng, self.onnx)
        if fmt == "onnx-external":
            return external_case(rng, self.external)
        if fmt == "native":
            return native_case(rng, self.native)
        if fmt.startswith("checkpoint"):
            return checkpoint_case(rng, self.checkpoint)
        return safetensors_case(rng, self.safetensors)


def load(fmt, path):
    """The loader a user would call for this format (the restricted reader without torch)."""
    if fmt == "checkpoint-restricted":
        with open(path, "rb") as f:
            return from_torch(_read_zip_checkpoint(f, str(path), Budget()))
    return le.load(path)


def outcome(fmt, files: dict, folder) -> tuple:
    """Write the files of a case into folder, load its model and build an Engine from it:
    ("loaded", ""), ("refused", the ModelError's message) or ("escaped", what escaped)."""
    for name, data in files.items():
        (folder / name).write_bytes(data)
    try:
        le.Engine(load(fmt, folder / next(iter(files))))
    except le.ModelError as e:
        return "refused", str(e).replace(str(folder), "")
    except Exception as e:  # the finding
        return "escaped", f"{type(e).__name__}: {str(e)[:300]}"
    return "loaded", ""


def check(fmt, files: dict, folder) -> str | None:
    """None when the case loads or is a ModelError, else what escaped."""
    kind, detail = outcome(fmt, files, folder)
    return detail if kind == "escaped" else None
