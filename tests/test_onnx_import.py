"""converters.from_onnx: ONNX's own LSTM cases, torch.onnx.export graphs, hand-built
graphs, refusals, and external data that must stay in the model's folder."""
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstm_engine as le
from converters import from_onnx, import_onnx, to_onnx
from helpers import TOL, make_model, maxdiff, rand


def _backend_cases():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return collect_testcases("LSTM")


@pytest.mark.parametrize("case", _backend_cases(), ids=lambda c: c.name)
def test_onnx_backend_cases(case):
    feeds = dict(zip([i.name for i in case.model.graph.input], case.data_sets[0][0]))
    want = dict(zip([o.name for o in case.model.graph.output], case.data_sets[0][1]))
    weights = {k: feeds.pop(k) for k in ("W", "R", "B", "P") if k in feeds}
    with pytest.raises(le.ModelError, match="bind it with from_onnx"):
        from_onnx(case.model)
    model, io = import_onnx(case.model, constants=weights)
    X, state, lengths = io.engine_args(feeds, model)
    Y, st = le.Engine(model).run(X, state, lengths)
    got = io.graph_outputs(Y, st, model)
    assert set(got) == set(want)
    for name in want:
        assert maxdiff(got[name], want[name]) <= TOL, name


# ---- graphs from torch.onnx.export -------------------------------------------------
EXPORTS = {
    "stacked+logsoftmax": dict(layers=2, head=5, act="logsoftmax"),
    "bidirectional+batch_first": dict(layers=1, bidirectional=True, batch_first=True),
    "3-layer bidirectional": dict(layers=3, bidirectional=True),
    "embedding+softmax": dict(layers=2, vocab=20, head=20, act="softmax"),
    "sigmoid head, no state": dict(layers=2, head=3, act="sigmoid", state=False),
}


@pytest.mark.parametrize("B", [3, 1], ids=["batch3", "batch1"])  # exports fix the batch: 1 squeezes away
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", EXPORTS)
def test_torch_exports(name, dynamo, B):
    from torch_models import Net, export, numpy_args, ort_session, torch_out, torch

    torch.manual_seed(0)
    net = Net(**EXPORTS[name]).eval()
    args = net.example(B=B)
    proto = export(net, args, dynamo)
    model, io = import_onnx(proto)
    feeds = dict(zip(["x", "h0", "c0"], numpy_args(args)))
    X, state, lengths = io.engine_args(feeds, model)
    eng = le.Engine(model)
    Y, st = eng.run(X, state, lengths)
    got = io.graph_outputs(Y, st, model)
    ref = dict(zip([o.name for o in proto.graph.output], ort_session(proto).run(None, feeds)))
    tout = dict(zip(["y", "hn", "cn"], torch_out(net, args)))
    assert set(got) == set(ref)
    for k in ref:
        assert maxdiff(got[k], ref[k]) <= TOL, ("onnxruntime", k)
        assert maxdiff(got[k], tout[k]) <= TOL, ("torch", k)
    if model.streamable:  # frame by frame through a Stream, sequence 0 of the batch
        x0 = X[0] if model.layout == 1 else X[:, 0]
        s = eng.open_stream(state=None if state is None else ([a[0] for a in state[0]], [a[0] for a in state[1]]))
        ys = np.stack([s.step(x) for x in x0])
        assert maxdiff(ys, Y[0] if model.layout == 1 else Y[:, 0]) <= 1e-6


def test_model_inside_a_bigger_graph_is_refused_then_selected():
    from torch_models import export, torch

    class ConvLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(6, 6, 3, padding=1)
            self.lstm = torch.nn.LSTM(6, 8)

        def forward(self, x):
            z = torch.relu(self.conv(x.permute(1, 2, 0)).permute(2, 0, 1))
            return self.lstm(z)[0]

    torch.manual_seed(0)
    net = ConvLSTM().eval()
    x = torch.randn(7, 2, 6)
    net.state = False
    proto = export(net, (x,), dynamo=False)
    with pytest.raises(le.ModelError, match=r"unsupported ops on the way to the outputs: Conv .*select='lstm'"):
        from_onnx(proto)
    model = from_onnx(proto, select="lstm")
    with torch.no_grad():
        z = torch.relu(net.conv(x.permute(1, 2, 0)).permute(2, 0, 1))
        want = net.lstm(z)[0].numpy()
    assert model.head is None and len(model.layers) == 1
    assert maxdiff(le.Engine(model).run(z.numpy())[0], want) <= TOL


# ---- round trip through to_onnx: every option ONNX can express ------------------------
@pytest.mark.parametrize("cfg", [
    dict(hidden=(12, 7), direction=["bidirectional", "reverse"], peep=True, clip=2.5,
         input_forget=[True, False], head=4, head_act="LogSoftmax"),
    dict(hidden=(9,), layout=1, direction="bidirectional", vocab=30, head=30, head_act="Softmax"),
    dict(hidden=(8,), activations=(le.activations.make("HardSigmoid", 0.3, 0.4), le.activations.make("Elu", 0.7),
                                   le.activations.make("ScaledTanh", 0.8, 1.2))),
], ids=["stack", "layout1-embedding", "activations"])
def test_round_trip_keeps_the_model(rng, cfg):
    model = make_model(rng, 5, **cfg)
    for with_state in (False, True):
        back, io = import_onnx(to_onnx(model, with_state=with_state, with_lengths=True))
        assert back.fingerprint() == model.fingerprint()
        assert io.lengths == "sequence_lens" and bool(io.h0) == with_state
        if with_state:  # one state input and output per layer, each a run of its cells
            firsts = np.cumsum([0] + [layer.num_directions for layer in model.layers])
            runs = [(li, int(firsts[li]), layer.num_directions) for li, layer in enumerate(model.layers)]
            assert io.h0 == [(f"h0_{li}", a, n) for li, a, n in runs]
            assert io.cn == [(f"cn_{li}", a, n) for li, a, n in runs]


def test_to_onnx_refuses_projection(rng):
    with pytest.raises(le.ModelError, match="proj_size"):
        to_onnx(make_model(rng, 4, (8,), proj=3))


# ---- hand-built single nodes ----------------------------------------------------------
def lstm_graph(rng, attrs=None, weights_as_inputs=(), I=3, H=4, D=1, const_node=False):
    W, R, B = rand(rng, D, 4 * H, I), rand(rng, D, 4 * H, H), rand(rng, D, 8 * H)
    tensors = {"W": W, "R": R, "B": B}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])]
    nodes, inits = [], []
    for k, v in tensors.items():
        if k in weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)))
        elif const_node:
            nodes.append(helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)))
        else:
            inits.append(numpy_helper.from_array(v, k))
    nodes.append(helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], name="the_lstm", hidden_size=H,
                                  **(attrs or {})))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 9
    return m, tensors


def test_weights_from_constant_nodes(rng):
    m, _ = lstm_graph(rng, const_node=True)
    X = rand(rng, 5, 2, 3)
    want = ort_run_graph(m, {"X": X})["Y_h"]
    model, io = import_onnx(m)
    Y, st = le.Engine(model).run(X)
    assert maxdiff(io.graph_outputs(Y, st, model)["Y_h"], want) <= TOL


def ort_run_graph(m, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in m.graph.output], s.run(None, feeds)))


def test_weights_as_runtime_inputs_need_binding(rng):
    m, t = lstm_graph(rng, weights_as_inputs=("R",))
    with pytest.raises(le.ModelError, match=r"input R comes from run-time graph input 'R'.*constants="):
        from_onnx(m)
    assert from_onnx(m, constants={"R": t["R"]}).layers[0].hidden_size == 4
    with pytest.raises(le.ModelError, match="not graph inputs"):
        from_onnx(m, constants={"R": t["R"], "Q": t["R"]})


@pytest.mark.parametrize("attrs, match", [
    (dict(foo=1), r"unsupported attribute\(s\) \['foo'\]"),
    (dict(activations=["Sigmoid", "Swish", "Tanh"]), "unsupported activation 'Swish'"),
    (dict(activations=["Sigmoid", "Tanh"]), "2 activations for 1 direction"),
    (dict(direction="bidirectional"), "do not fit direction"),
    (dict(clip=-1.0), "clip"),
    (dict(activations=["LeakyRelu", "Tanh", "Tanh"], activation_alpha=[float("nan")]),
     "activation_alpha/activation_beta: must be a finite number within float32 range, got nan"),
    (dict(activations=["Sigmoid", "ScaledTanh", "Tanh"], activation_alpha=[1.0], activation_beta=[float("inf")]),
     "got inf"),
])
def test_bad_lstm_nodes(rng, attrs, match):
    m, _ = lstm_graph(rng, attrs)
    with pytest.raises(le.ModelError, match=match):
        from_onnx(m)


def test_wrong_hidden_size(rng):
    m, _ = lstm_graph(rng)
    m.graph.node[-1].attribute[0].i = 5
    with pytest.raises(le.ModelError, match="hidden_size=5"):
        from_onnx(m)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files(rng, tmp_path, damage):
    data = to_onnx(make_model(rng, 4, (8,))).SerializeToString()
    blob = {"truncated": data[:len(data) // 3], "garbage": os.urandom(200), "empty": b""}[damage]
    p = tmp_path / "m.onnx"
    p.write_bytes(blob)
    with pytest.raises(le.ModelError):
        from_onnx(p)
    with pytest.raises(le.ModelError):
        le.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(le.ModelError, match="no such file"):
        from_onnx(tmp_path / "nope.onnx")


def test_load_by_suffix(rng, tmp_path):
    model = make_model(rng, 4, (8,), head=3)
    p = tmp_path / "m.onnx"
    onnx.save(to_onnx(model), p)
    assert le.load(p).fingerprint() == model.fingerprint()


# ---- external data (DESIGN §7) -------------------------------------------------------
def _save_external(model, folder, location, carrier="initializer"):
    """The model saved with its weights in an external file; carrier "Constant" moves
    them from initializers into Constant nodes, which may hold external data too."""
    proto = to_onnx(model)
    onnx.save(proto, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    if carrier == "Constant":
        proto = onnx.load(folder / "m.onnx", load_external_data=False)
        consts = [helper.make_node("Constant", [], [t.name], value=t) for t in proto.graph.initializer]
        del proto.graph.initializer[:]
        nodes = consts + list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, folder / "m.onnx")
    return folder / "m.onnx"


def _relocate(path, new_location):
    proto = onnx.load(path, load_external_data=False)
    tensors = list(proto.graph.initializer) + [n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"]
    for t in tensors:
        for e in t.external_data:
            if e.key == "location":
                e.value = new_location
    onnx.save(proto, path)


CARRIERS = ["initializer", "Constant"]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_external_data_inside_the_folder_loads(rng, tmp_path, carrier):
    model = make_model(rng, 4, (8,))
    p = _save_external(model, tmp_path, "weights.bin", carrier)
    assert from_onnx(p).fingerprint() == model.fingerprint()
    with pytest.raises(le.ModelError, match="not loaded from a path"):
        from_onnx(p.read_bytes())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_external_data_escaping_the_folder_is_refused(rng, tmp_path, monkeypatch, carrier):
    model = make_model(rng, 4, (8,))
    inner = tmp_path / "model"
    inner.mkdir()
    p = _save_external(model, inner, "weights.bin", carrier)
    (tmp_path / "secret.bin").write_bytes((inner / "weights.bin").read_bytes())
    for loc, match in [("../secret.bin", "leaves the model's folder"),
                       (str(tmp_path / "secret.bin"), "leaves the model's folder"),
                       ("sub/../../secret.bin", "leaves the model's folder")]:
        _relocate(p, loc)
        with pytest.raises(le.ModelError, match=match):
            from_onnx(p)
    os.symlink(tmp_path / "secret.bin", inner / "link.bin")
    _relocate(p, "link.bin")
    with pytest.raises(le.ModelError, match="symlink"):
        from_onnx(p)
    _relocate(p, "missing.bin")
    with pytest.raises(le.ModelError, match="cannot read external data"):
        from_onnx(p)
    # a relative location resolves in the model's folder, never in the working directory
    monkeypatch.chdir(tmp_path)
    _relocate(p, "secret.bin")
    with pytest.raises(le.ModelError, match="cannot read external data"):
        from_onnx(p)
    with pytest.raises(le.ModelError, match="not loaded from a path"):
        from_onnx(p.read_bytes())


def test_external_data_in_any_attribute_stays_in_the_folder(tmp_path, monkeypatch):
    """A tensor attribute that the importer folds (ConstantOfShape's value on a constant
    shape, which ONNX's own evaluator would read relative to the working directory)
    obeys the same rule as initializers: found in the model's folder, or refused."""
    H, I = 2, 3
    value = TensorProto(name="v", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "v.bin"), ("offset", "4"), ("length", "4")):
        value.external_data.add(key=k, value=v)
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["W"], value=value),
             helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)]
    inits = [numpy_helper.from_array(np.array([1, 4 * H, I], np.int64), "shape"),
             numpy_helper.from_array(np.zeros((1, 4 * H, H), np.float32), "R")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, I])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    inner = tmp_path / "model"
    inner.mkdir()
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), inner / "m.onnx")
    np.array([7, 2.5], np.float32).tofile(tmp_path / "v.bin")  # beside the working directory only
    monkeypatch.chdir(tmp_path)
    with pytest.raises(le.ModelError, match="cannot read external data 'v.bin'"):
        from_onnx(inner / "m.onnx")
    np.array([7, -1.5], np.float32).tofile(inner / "v.bin")
    assert np.all(from_onnx(inner / "m.onnx").layers[0].directions[0].W == -1.5)


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile", "Range", "MatMul"])
def test_constant_folding_cannot_blow_up(op):
    """A few bytes of constants that would fold into 10^10 elements are refused before
    anything is allocated (DESIGN §7: a small file must not exhaust memory)."""
    big = 100000
    ins = {"ConstantOfShape": [np.array([big, big], np.int64)],
           "Expand": [np.ones(1, np.float32), np.array([big, big], np.int64)],  # zeros are never made
           "Tile": [np.ones((1, 1), np.float32), np.array([big, big], np.int64)],
           "Range": [np.array(0, np.int64), np.array(big * big, np.int64), np.array(1, np.int64)],
           "MatMul": [np.zeros((big, 1), np.float32), np.zeros((1, big), np.float32)]}[op]
    names = [f"c{k}" for k in range(len(ins))]
    nodes = [helper.make_node(op, names, ["big"]),
             helper.make_node("Shape", ["big"], ["s"]),  # keeps the folded value on the way to W
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["total"], keepdims=0),
             helper.make_node("Expand", ["total", "wshape"], ["W"]),
             helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2)]
    inits = [numpy_helper.from_array(v, n) for v, n in zip(ins, names)] + [
        numpy_helper.from_array(np.array([1, 8, 3], np.int64), "wshape"),
        numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    with pytest.raises(le.ModelError, match=f"folding constant {op}: .* refused before allocating"):
        from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_reshape_after_the_head(rng):
    """Glue after the head (here a Reshape that keeps the shape) sizes the O axis right."""
    model = make_model(rng, 5, (8,), head=3, head_act="Softmax")
    proto = to_onnx(model)
    y = [n for n in proto.graph.node if n.op_type == "Identity"][0]
    y.input[0], src = "y_flat", y.input[0]
    shape = numpy_helper.from_array(np.array([0, 0, 3], np.int64), "y_shape")
    proto.graph.initializer.append(shape)
    proto.graph.node.insert(len(proto.graph.node) - 1, helper.make_node("Reshape", [src, "y_shape"], ["y_flat"]))
    back, io = import_onnx(proto)
    assert back.fingerprint() == model.fingerprint() and io.y_axes[-1] == "O"
