"""Mutated and crafted model files give a Model or a ModelError -- never another exception (DESIGN §7)."""
import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstm_engine as le
from converters import from_onnx, from_torch, import_onnx, to_onnx
from converters.budget import Budget
from converters.torch_import import _read_zip_checkpoint
from helpers import make_model

N = 150


def mutations(data: bytes, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(N):
        b = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            b[rng.integers(0, len(b))] = rng.integers(0, 256)
        yield bytes(b)


def survives(load, data, tmp_path, suffix):
    p = tmp_path / f"m{suffix}"
    for blob in mutations(data, len(data)):
        p.write_bytes(blob)
        try:
            le.Engine(load(p))
        except le.ModelError:
            pass


def read_without_torch(path):
    """The restricted reader's object from a zip checkpoint, as from_torch makes it without torch."""
    with open(path, "rb") as f:
        return _read_zip_checkpoint(f, str(path), Budget())


def test_mutated_onnx(rng, tmp_path):
    proto = to_onnx(make_model(rng, 4, (8, 6), head=3, head_act="Softmax", peep=True), with_state=True,
                    with_lengths=True)
    survives(from_onnx, proto.SerializeToString(), tmp_path, ".onnx")


def test_mutated_native(rng, tmp_path):
    make_model(rng, 4, (8,), peep=True).save(tmp_path / "ok.lstm")
    survives(le.load, (tmp_path / "ok.lstm").read_bytes(), tmp_path, ".lstm")


def test_mutated_checkpoints_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.LSTM(3, 4, num_layers=2).state_dict(), tmp_path / "ok.pt")
    survives(lambda p: from_torch(read_without_torch(p)), (tmp_path / "ok.pt").read_bytes(), tmp_path, ".pt")


def test_mutated_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file(dict(torch.nn.LSTM(3, 4).state_dict()), str(tmp_path / "ok.safetensors"))
    survives(from_torch, (tmp_path / "ok.safetensors").read_bytes(), tmp_path, ".safetensors")


# ---- structured mutation (tests/fuzzing.py): the framing holds, the structure lies -------
STRUCTURED = 300  # cases per format; tests/fuzz_campaign.py runs tens of thousands


@pytest.fixture(scope="module")
def cases():
    import fuzzing

    return fuzzing.Cases()


@pytest.mark.parametrize("fmt", ["onnx", "onnx-external", "native", "checkpoint", "checkpoint-restricted",
                                 "safetensors"])
def test_structured_mutations(cases, tmp_path, fmt):
    """ONNX attributes of the wrong type, out of range, NaN or empty; tensors of the wrong
    rank or dtype; external data entries that lie; native and safetensors metadata with
    swapped types and impossible numbers; checkpoint records with hostile offsets, sizes,
    strides, keys and dtypes: each loads, or is a ModelError."""
    import fuzzing

    if fmt == "checkpoint":
        pytest.importorskip("torch")
    escaped = []
    for seed in range(STRUCTURED):
        files, how = cases.make(fmt, seed)
        folder = tmp_path / str(seed)
        folder.mkdir()
        outcome = fuzzing.check(fmt, files, folder)
        if outcome is not None:
            escaped.append(f"seed {seed} ({how}): {outcome}")
    assert not escaped, "\n".join(escaped[:10])


def _lying_safetensors(path, change):
    """A valid nn.LSTM(3, 4) safetensors file, then its header changed by change(header)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in
               {"weight_ih_l0": (16, 3), "weight_hh_l0": (16, 4), "bias_ih_l0": (16,), "bias_hh_l0": (16,)}.items()},
              str(path))
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = change(json.loads(data[8:8 + n]))
    h = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])


def _set(key, value):
    def change(header):
        header["weight_ih_l0"][key] = value
        return header
    return change


@pytest.mark.parametrize("change", [
    lambda h: [h],  # a header that is not an object
    lambda h: "[" * 100000 + "]" * 100000,  # nesting deeper than the JSON parser recurses
    _set("shape", [-16, -3]),  # negative dims whose product fits the bytes
    _set("shape", [16.0, 3.0]),
    _set("shape", [True, 16, 3]),
    _set("data_offsets", ["0", "192"]),
    _set("data_offsets", [0, 96, 192]),
    lambda h: {**h, "weight_ih_l0": [1, 2]},
], ids=["list", "deep", "negative-shape", "float-shape", "bool-shape", "string-offsets", "three-offsets",
        "entry-not-object"])
def test_crafted_safetensors_headers(tmp_path, change):
    """Well-formed JSON that lies about one tensor of an otherwise loadable file: a
    ModelError, whatever the lie."""
    p = tmp_path / "m.safetensors"
    _lying_safetensors(p, lambda h: h)
    from_torch(p)  # loads as it is
    _lying_safetensors(p, change)
    with pytest.raises(le.ModelError):
        from_torch(p)


def test_native_metadata_nested_too_deep(tmp_path):
    from safetensors.numpy import save_file

    from lstm_engine.model import FORMAT

    save_file({"a": np.zeros(1, np.float32)}, str(tmp_path / "deep.lstm"), metadata={FORMAT: "[" * 100000 + "]" * 100000})
    with pytest.raises(le.ModelError, match="damaged metadata"):
        le.load(tmp_path / "deep.lstm")


@pytest.mark.parametrize("reader", ["torch", "restricted"])
def test_checkpoint_tensor_repeating_its_storage(tmp_path, reader):
    """A 2-byte storage viewed as 2^27 elements (stride 0) would unpack into 512 MB of
    float32: refused by both readers before anything that large is made."""
    torch = pytest.importorskip("torch")
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["buffer"] = torch.zeros(1, dtype=torch.float16).expand(1 << 27)
    torch.save(sd, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 1 << 20
    with pytest.raises(le.ModelError, match="refused before allocating"):
        from_torch(tmp_path / "bomb.pt" if reader == "torch" else read_without_torch(tmp_path / "bomb.pt"))


# ---- ONNX external data: checked against the real file before reading (issue 11, item 5) ----
def _external_model(folder, rng):
    """A model whose weights are in folder/w.bin; returns (path, its proto without the data)."""
    onnx.save(to_onnx(make_model(rng, 4, (8,))), folder / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return folder / "m.onnx", onnx.load(folder / "m.onnx", load_external_data=False)


def _set_external(proto, tensor, **info):
    for e in tensor.external_data:
        if e.key in info:
            e.value = info.pop(e.key)
    for k, v in info.items():
        tensor.external_data.add(key=k, value=v)
    return proto


@pytest.mark.parametrize("info, match", [
    ({"length": str(1 << 40)}, r"claims bytes 0\.\.1099511627776 of a \d+-byte file"),
    ({"length": str(10 ** 30)}, "length '1000000000000000000000000000000' is not a byte count"),
    ({"offset": str(10 ** 30)}, "offset .* is not a byte count"),
    ({"offset": "-5"}, "offset '-5' is not a byte count"),
    ({"offset": "1_0"}, "offset '1_0' is not a byte count"),
    ({"location": "w.bin\x00x"}, "is not a file name"),
], ids=["2^40", "10^30", "offset-10^30", "negative", "underscore", "nul"])
def test_external_data_claims_are_checked_before_reading(rng, tmp_path, info, match):
    path, proto = _external_model(tmp_path, rng)
    onnx.save(_set_external(proto, proto.graph.initializer[0], **info), path)
    with pytest.raises(le.ModelError, match=match):
        from_onnx(path)


def test_external_bytes_are_read_at_most_once(rng, tmp_path):
    """Many tensors naming the same bytes would read a small file many times over."""
    path, proto = _external_model(tmp_path, rng)
    first = {e.key: e.value for e in proto.graph.initializer[0].external_data}
    for t in proto.graph.initializer[1:]:
        _set_external(proto, t, offset=first.get("offset", "0"), length=first["length"])
    onnx.save(proto, path)
    with pytest.raises(le.ModelError, match="claim more bytes than it holds"):
        from_onnx(path)


# ---- ONNX glue: attribute values are checked where the importer interprets them (item 5) ----
def _graph(nodes, inits=(), x_shape=("T", 1, 3), opset=17):
    """X -> nodes -> Y around an LSTM(hidden 2) that reads X and writes Y0."""
    lstm = helper.make_node("LSTM", ["X", "W", "R"], ["Y0"], hidden_size=2)
    inits = [numpy_helper.from_array(np.zeros((1, 8, 3), np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R"), *inits]
    g = helper.make_graph([lstm, *nodes], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ints(name, values):
    return helper.make_attribute(name, list(values), attr_type=onnx.AttributeProto.INTS)


def _node(op, ins, outs, *attrs, **kw):
    n = helper.make_node(op, ins, outs, **kw)
    n.attribute.extend(attrs)
    return n


def _const(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


GLUE = {  # Y0 of the LSTM is (T, 1, 1, 2): axes T, D, B, P
    "reshape-allowzero-0-and-minus-1": ([_node("Reshape", ["Y0", "s"], ["Y"], allowzero=1)], [_const("s", [0, -1])],
                                        r"Reshape to \[0, -1\]: not a valid shape"),
    "reshape-two-minus-1": ([_node("Reshape", ["Y0", "s"], ["Y"])], [_const("s", [-1, -1])], "not a valid shape"),
    "reshape-0-past-rank": ([_node("Reshape", ["Y0", "s"], ["Y"])], [_const("s", [1, 1, 1, 1, 0])],
                            "a 0 copies a dim the input does not have"),
    "transpose-empty-perm": ([_node("Transpose", ["Y0"], ["Yt"], _ints("perm", [])),
                              _node("Squeeze", ["Yt", "a"], ["Y"])], [_const("a", [0])],
                             "perm .* is not a permutation of 4 axes"),
    "transpose-repeated-perm": ([_node("Transpose", ["Y0"], ["Y"], _ints("perm", [0, 0, 1, 2]))], [],
                                "not a permutation"),
    "squeeze-axis-out-of-range": ([_node("Squeeze", ["Y0", "a"], ["Y"])], [_const("a", [7])],
                                  "Squeeze axis 7 is out of range for 4 axes"),
    "unsqueeze-repeated-axis": ([_node("Unsqueeze", ["Y0", "a"], ["Y"])], [_const("a", [0, 0])], "repeats an axis"),
    "concat-without-axis": ([_node("Concat", ["Y0", "Y0"], ["Y"])], [], "Concat without axis"),
    "attribute-of-the-wrong-type": ([_node("Transpose", ["Y0"], ["Y"], helper.make_attribute("perm", 1.5))], [],
                                    "attribute 'perm' is of type FLOAT; ONNX defines it as INTS"),
    "attribute-unknown": ([_node("Identity", ["Y0"], ["Y"], axis=1)], [], r"unsupported attribute\(s\) \['axis'\]"),
    "lstm-layout-7": (None, [], "layout=7"),
    "matmul-three-inputs": ([_node("MatMul", ["Y0", "W", "R"], ["Y"])], [],
                            r"MatMul node '': 3 input\(s\) and 1 output\(s\); ONNX MatMul \(opset 17\) takes 2 to 2"),
    "squeeze-no-input": ([_node("Squeeze", [], ["Y"])], [], "0 input"),
}


@pytest.mark.parametrize("case", GLUE)
def test_glue_attribute_values_are_checked(case):
    nodes, inits, match = GLUE[case]
    if nodes is None:  # the LSTM node itself
        proto = _graph([_node("Identity", ["Y0"], ["Y"])])
        proto.graph.node[0].attribute.append(helper.make_attribute("layout", 7))
    else:
        proto = _graph(nodes, inits)
    with pytest.raises(le.ModelError, match=match):
        from_onnx(proto)


def test_shape_of_an_input_without_a_fixed_width():
    """Shape of the model input before any LSTM, whose last dim the graph leaves open."""
    nodes = [helper.make_node("Shape", ["X"], ["s"]), helper.make_node("Gather", ["s", "one"], ["b"]),
             helper.make_node("Concat", ["one", "b", "two"], ["hshape"], axis=0),
             helper.make_node("ConstantOfShape", ["hshape"], ["h0"]),
             helper.make_node("LSTM", ["X", "W", "R", "", "", "h0"], ["Y"], hidden_size=2)]
    inits = [numpy_helper.from_array(np.zeros((1, 8, 3), np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R"), _const("one", [1]), _const("two", [2])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, "I"])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    with pytest.raises(le.ModelError, match="the last dim of graph input 'X' is not a fixed size"):
        from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_graph_output_cut_from_a_state_input():
    """A graph output that is a slice of the initial state input, not an LSTM's final state."""
    proto = _graph([_node("Identity", ["Y0"], ["Y"]), helper.make_node("Slice", ["h0", "s0", "s1", "a"], ["hs"])],
                   [_const("s0", [0]), _const("s1", [1]), _const("a", [0])])
    proto.graph.input.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, 2]))
    proto.graph.output.append(helper.make_tensor_value_info("hs", TensorProto.FLOAT, None))
    with pytest.raises(le.ModelError, match="'hs' .*not the model output or the full final state"):
        from_onnx(proto)


def test_head_softmax_axis_out_of_range(rng):
    proto = to_onnx(make_model(rng, 4, (8,), head=3, head_act="Softmax"))
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    del softmax.attribute[:]
    softmax.attribute.append(helper.make_attribute("axis", 9))
    with pytest.raises(le.ModelError, match="Softmax axis 9 is out of range for 3 axes"):
        from_onnx(proto)


def test_state_input_of_a_huge_declared_size_costs_nothing():
    """An initial state input declared with 10^12 cells: its cells are a range, never listed."""
    nodes = [helper.make_node("Slice", ["h0", "s0", "s1", "a"], ["h"]),
             helper.make_node("LSTM", ["X", "W", "R", "", "", "h"], ["Y"], hidden_size=2)]
    inits = [numpy_helper.from_array(np.zeros((1, 8, 3), np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R"),
             _const("s0", [0]), _const("s1", [1]), _const("a", [0])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, 3]),
                                       helper.make_tensor_value_info("h0", TensorProto.FLOAT, [10 ** 12, 1, 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    _, io = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert io.h0 == [("h0", 0, 1)]


# ---- only regular files are read (item 6) ---------------------------------------------
RESCUE = """
import os, sys, time
time.sleep(10)
open(sys.argv[2], "w").close()
while True:  # a writer's open and close releases a reader blocked in open(), and ends its reads
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader waits right now
        pass
    time.sleep(0.2)
"""


@contextlib.contextmanager
def fifo_guard(fifo):
    """Fails the test, instead of hanging it, when a load blocks on `fifo`: after a while,
    and then as often as it takes, another process opens it for writing. (A thread could
    not: a reader blocked in native code may hold the GIL.)"""
    marker = f"{fifo}.rescued"
    rescuer = subprocess.Popen([sys.executable, "-c", RESCUE, str(fifo), marker])
    try:
        yield
    finally:
        rescuer.kill()
        rescuer.wait()
    assert not os.path.exists(marker), f"the load blocked on the FIFO {fifo}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("load", ["load", "Model.load", "from_onnx", "from_torch"])
@pytest.mark.parametrize("suffix", [".lstm", ".safetensors", ".onnx", ".pt"])
def test_fifo_named_like_a_model_is_refused(tmp_path, suffix, load):
    fifo = tmp_path / f"x{suffix}"
    os.mkfifo(fifo)
    fn = {"load": le.load, "Model.load": le.Model.load, "from_onnx": from_onnx, "from_torch": from_torch}[load]
    with fifo_guard(fifo), pytest.raises(le.ModelError, match="not a regular file"):
        fn(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_as_external_data_is_refused(rng, tmp_path):
    path, _ = _external_model(tmp_path, rng)
    (tmp_path / "w.bin").unlink()
    os.mkfifo(tmp_path / "w.bin")
    with fifo_guard(tmp_path / "w.bin"), pytest.raises(le.ModelError, match="w.bin.*not a regular file"):
        from_onnx(path)


def test_directory_named_like_a_model_is_refused(tmp_path):
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(le.ModelError, match="not a regular file"):
        le.load(tmp_path / "x.onnx")


# ---- what a file makes the loader allocate is bounded in total (item 7) ------------------
@pytest.fixture
def small_budget(monkeypatch):
    """The import budget's growth at 2^20 elements: the same bound, at a scale that keeps
    the tests light (the default, 2^26, is exercised by the single huge requests above)."""
    import converters.budget

    monkeypatch.setattr(converters.budget, "GROWTH", 1 << 20)
    return 1 << 20


def _folding_graph(nodes, last, inits):
    """nodes folding constants into `last`, whose size then reaches W (Shape, ReduceSum,
    Expand), so the folds lie on the way to the model and are not skipped."""
    nodes = nodes + [helper.make_node("Shape", [last], ["s"]),
                     helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                     helper.make_node("ReduceSum", ["sf"], ["total"], keepdims=0),
                     helper.make_node("Expand", ["total", "wshape"], ["W"]),
                     helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2)]
    inits = inits + [_const("wshape", [1, 8, 3]), numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_folds_count_against_one_budget(small_budget):
    """Concat(D, D) makes no more than its inputs hold, yet a chain of them doubles D each
    time: every folded element counts, over the whole import."""
    doublings = 10  # 4096 elements -> 2^22 in the last one
    nodes = [helper.make_node("Concat", [f"c{k}", f"c{k}"], [f"c{k + 1}"], axis=0) for k in range(doublings)]
    proto = _folding_graph(nodes, f"c{doublings}", [numpy_helper.from_array(np.zeros(4096, np.float32), "c0")])
    with pytest.raises(le.ModelError, match="folding constant Concat: .* refused before allocating"):
        from_onnx(proto)


FOLD_MEMORY = """
import resource, sys
import numpy as np
from onnx import helper, numpy_helper
sys.path.insert(0, sys.argv[1])
from test_hostile_files import _folding_graph
from converters import from_onnx
nodes = [helper.make_node("Concat", ["d"] * 1024, ["big"], axis=0)]
proto = _folding_graph(nodes, "big", [numpy_helper.from_array(np.zeros(4096, np.int64), "d")])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from_onnx(proto)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_fold_size_is_told_without_following_values():
    """A Concat naming one int64 vector 1024 times folds into 4M elements (32 MB): ONNX
    shape inference with data propagation would follow all of them, at ~80 bytes each."""
    res = subprocess.run([sys.executable, "-c", FOLD_MEMORY, os.path.dirname(__file__)], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) < 200, f"peak memory grew by {res.stdout.split()[-1]} MB"


def _views_checkpoint(path, tensors):
    """tensors saved by torch.save, then re-deflated (torch stores members uncompressed)."""
    torch = pytest.importorskip("torch")
    torch.save(tensors, path)
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))


def _load_both_ways(path, reader):
    return from_torch(path) if reader == "torch" else from_torch(read_without_torch(path))


@pytest.mark.parametrize("reader", ["torch", "restricted"])
def test_checkpoint_views_count_against_one_budget(tmp_path, reader, small_budget):
    """16 tensors that each repeat a 2-byte storage 2^17 times pass any per-tensor limit;
    together they pass the import's budget."""
    torch = pytest.importorskip("torch")
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd.update({f"buffer{k}": torch.zeros(1, dtype=torch.float16).expand(small_budget // 8) for k in range(16)})
    _views_checkpoint(tmp_path / "views.pt", sd)
    with pytest.raises(le.ModelError, match="refused before allocating"):
        _load_both_ways(tmp_path / "views.pt", reader)


@pytest.mark.parametrize("reader", ["torch", "restricted"])
def test_many_views_of_one_storage(tmp_path, reader, small_budget):
    """400 overlapping views of one deflated 1 MB storage: the storage is read once and the
    views count against the budget (they would make 400 MB)."""
    torch = pytest.importorskip("torch")
    base = torch.zeros(1 << 18)
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd.update({f"view{k}": base[k:] for k in range(400)})
    _views_checkpoint(tmp_path / "views.pt", sd)
    assert (tmp_path / "views.pt").stat().st_size < 1 << 17
    with pytest.raises(le.ModelError, match="refused before allocating"):
        _load_both_ways(tmp_path / "views.pt", reader)


def test_tied_weights_count_once(tmp_path, small_budget):
    """One tensor under two keys (tied weights) is made once, and counted once."""
    torch = pytest.importorskip("torch")
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["emb.weight"] = sd["head.weight"] = torch.zeros(small_budget // 2 + 10, 3)
    torch.save(sd, tmp_path / "tied.pt")
    from_torch(tmp_path / "tied.pt")


@pytest.mark.parametrize("field, value", [("size", ("16",)), ("stride", None), ("offset", 1.5), ("size", (True,)),
                                          ("size", (1,) * 65)])
def test_checkpoint_records_of_the_wrong_type(tmp_path, field, value):
    """Offsets, sizes and strides are counts; anything else is named, not a TypeError."""
    import fuzzing

    records, storages = fuzzing.lstm_records(np.random.default_rng(0))
    records["bias_ih_l0"][field] = value
    (tmp_path / "m.pt").write_bytes(fuzzing.checkpoint_bytes(records, storages))
    with pytest.raises(le.ModelError, match="damaged tensor record in checkpoint .*expected counts"):
        read_without_torch(tmp_path / "m.pt")


class _Evil:
    """Pickled as a persistent id that references one large list many times."""


def test_persistent_id_is_quoted_briefly(tmp_path):
    """The refusal quotes a bounded repr: building the full one of a tuple that references a
    10^4-element list 2000 times would take ~60 MB from a tiny pickle."""
    import pickle
    import tracemalloc

    big = [0] * 10000

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage",) + (big,) * 2000 if isinstance(obj, _Evil) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": _Evil()})
    with zipfile.ZipFile(tmp_path / "pid.pt", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(le.ModelError, match="unexpected storage record"):
            read_without_torch(tmp_path / "pid.pt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, f"{peak} bytes traced"


def test_only_ops_of_bounded_work_are_folded():
    """ONNX's reference evaluator runs Conv in Python loops: a Conv of two constants of a
    few hundred KB would keep the import busy for minutes. Only data movement, shape
    arithmetic, elementwise math, reductions and MatMul/Gemm are folded."""
    x, w = np.ones((1, 1, 64), np.float32), np.ones((1, 1, 32), np.float32)
    proto = _folding_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "y",
                           [numpy_helper.from_array(x, "x"), numpy_helper.from_array(w, "w")])
    with pytest.raises(le.ModelError, match="Conv of constants is not folded"):
        from_onnx(proto)


def test_lstm_layers_sharing_weights_count_against_the_budget(small_budget):
    """Ten stacked LSTMs that all take one initializer as W and R: a 256 KB file that would
    be a model of 20 times its weights. The first use is what the file holds; every other
    use counts."""
    H, layers = 128, 10
    nodes, prev = [], "X"
    for k in range(layers):
        nodes += [helper.make_node("LSTM", [prev, "W", "W"], [f"Y{k}"], hidden_size=H),
                  helper.make_node("Squeeze", [f"Y{k}", "ax"], [f"y{k}"])]
        prev = f"y{k}"
    inits = [numpy_helper.from_array(np.full((1, 4 * H, H), 0.01, np.float32), "W"), _const("ax", [1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, H])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    with pytest.raises(le.ModelError, match="LSTM node '' [WR]: the import would create .* refused before allocating"):
        from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
