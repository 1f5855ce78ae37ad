"""Exports users bring (issue 12): each graph is built here, imported, and run offline and
frame by frame against onnxruntime on the same file (lstm_engine.validate does both)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstm_engine as le
from converters import from_onnx, import_onnx
from lstm_engine.validate import validate

pytest.importorskip("onnxruntime")


def _agrees(proto, inputs=None, streamed=True):
    """validate's verdict on proto: onnxruntime as the reference, every output checked."""
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime reads IR <= 10
    r = validate(proto, inputs=inputs, steps=9)
    assert r["reference"].startswith("onnxruntime"), r["reference"]
    assert r["pass"] and not r["unchecked_outputs"], r
    assert r["streamed"] == streamed, r
    return r


def _lstm_graph(rng, x_shape, head_nodes, head_inits, T=7, I=5, H=6, pre=(), x_name="x", out="y",
                lstm_in="x", squeeze="y_lstm"):
    """x -> [pre] -> LSTM -> Squeeze(D and a batch of 1) -> head_nodes -> out."""
    W, R = rng.standard_normal((1, 4 * H, I)) * 0.5, rng.standard_normal((1, 4 * H, H)) * 0.5
    B = rng.standard_normal((1, 8 * H)) * 0.1
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (("W", W), ("R", R), ("B", B))]
    inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "sq_axes"))
    nodes = list(pre) + [
        helper.make_node("LSTM", [lstm_in, "W", "R", "B"], ["y_lstm"], hidden_size=H),
        helper.make_node("Squeeze", ["y_lstm", "sq_axes"], ["frames"]),
    ] + head_nodes
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits + head_inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# ---- item 2: a batch axis the graph fixes at 1 squeezes away ---------------------------
def test_squeeze_of_a_batch_fixed_at_one(rng):
    Wh = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "Wh")
    proto = _lstm_graph(rng, [7, 1, 5], [helper.make_node("MatMul", ["frames", "Wh"], ["y"])], [Wh])
    model, io = import_onnx(proto)
    assert model.head is not None and io.batched
    _agrees(proto)


# ---- item 1: Gemm heads -----------------------------------------------------------------
@pytest.mark.parametrize("attrs", [{}, dict(transB=1), dict(transB=1, alpha=0.5, beta=2.0), dict(alpha=-1.5)],
                         ids=["plain", "transB", "transB-alpha-beta", "alpha"])
def test_gemm_head(rng, attrs):
    w = rng.standard_normal((3, 6) if attrs.get("transB") else (6, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "Wh"), numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "bh")]
    proto = _lstm_graph(rng, [7, 1, 5], [helper.make_node("Gemm", ["frames", "Wh", "bh"], ["y"], **attrs)], inits)
    assert import_onnx(proto)[0].head is not None
    _agrees(proto)


def test_gemm_with_trans_a_is_refused(rng):
    inits = [numpy_helper.from_array(rng.standard_normal((7, 3)).astype(np.float32), "Wh")]
    proto = _lstm_graph(rng, [7, 1, 5], [helper.make_node("Gemm", ["frames", "Wh"], ["y"], transA=1)], inits)
    with pytest.raises(le.ModelError, match="Gemm with transA"):
        import_onnx(proto)


# ---- items 1+2: torch.onnx.export of an unbatched nn.LSTM + nn.Linear --------------------
def _unbatched_net(head, layers=1, bidirectional=False, state=False):
    """nn.LSTM (+ nn.Linear) on x of shape (T, I), state (L*D, H): exporters wrap it in
    Unsqueeze/Squeeze (and Slice the state). Returns the net and its example args."""
    from torch_models import torch

    D = 2 if bidirectional else 1

    class Unbatched(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.state = state
            self.lstm = torch.nn.LSTM(6, 8, num_layers=layers, bidirectional=bidirectional)
            self.lin = torch.nn.Linear(8 * D, 4) if head else None

        def forward(self, x, h0=None, c0=None):
            y, (h, c) = self.lstm(x) if h0 is None else self.lstm(x, (h0, c0))
            y = self.lin(y) if head else y
            return (y, h, c) if state else y

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(9, 6, generator=g),) + tuple(torch.randn(layers * D, 8, generator=g) for _ in range(2 * state))
    return Unbatched().eval(), args


@pytest.mark.parametrize("cfg", [dict(), dict(layers=2, bidirectional=True, state=True), dict(layers=2, state=True)],
                         ids=["plain", "2-layer-bidirectional-state", "2-layer-state"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_unbatched_lstm_with_linear(dynamo, cfg):
    from torch_models import export, numpy_args, torch_out

    net, args = _unbatched_net(head=True, **cfg)
    proto = export(net, args, dynamo)
    model, io = import_onnx(proto)
    assert not io.batched and model.head is not None
    feeds = dict(zip(["x", "h0", "c0"], numpy_args(args)))
    r = _agrees(proto, feeds, streamed=not cfg.get("bidirectional"))
    got = io.graph_outputs(*le.Engine(model).run(*io.engine_args(feeds, model)), model)
    for name, want in zip(["y", "hn", "cn"], torch_out(net, args)):
        assert np.abs(got[name] - want).max() <= 1e-4, name
    assert r["inputs"]["x"] == [9, 6]
    _agrees(proto, streamed=not cfg.get("bidirectional"))  # random inputs shaped from the graph


# ---- item 4: one of initial_h / initial_c given, the other absent (zeros) ------------------
def _state_graph(rng, given, T=7, B=2, I=5, H=6):
    W, R = rng.standard_normal((1, 4 * H, I)) * 0.5, rng.standard_normal((1, 4 * H, H)) * 0.5
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (("W", W), ("R", R))]
    state = ["h0", ""] if given == "h" else ["", "c0"]
    node = helper.make_node("LSTM", ["x", "W", "R", "", ""] + state, ["y", "hn", "cn"], hidden_size=H)
    vi = helper.make_tensor_value_info
    g = helper.make_graph([node], "g", [vi("x", TensorProto.FLOAT, [T, B, I]), vi(given + "0", TensorProto.FLOAT, [1, B, H])],
                          [vi(n, TensorProto.FLOAT, None) for n in ("y", "hn", "cn")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("given", ["h", "c"])
def test_one_initial_state_absent(rng, given, tmp_path):
    from lstm_engine.cli import main

    proto = _state_graph(rng, given)
    _agrees(proto)
    proto.ir_version = 10
    onnx.save(proto, tmp_path / "m.onnx")
    assert main(["validate", str(tmp_path / "m.onnx"), "--steps", "9"]) == 0


# ---- item 7: validate casts --inputs to the declared types, and says when it falls back ---
def test_validate_casts_float64_inputs(rng, tmp_path, capsys):
    from lstm_engine.cli import main

    proto = _state_graph(rng, "h")
    proto.ir_version = 10
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((7, 2, 5)), h0=rng.standard_normal((1, 2, 6)))
    assert main(["validate", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "in.npz")]) == 0
    out = capsys.readouterr().out
    assert "reference: onnxruntime" in out and "NOT onnxruntime" not in out
    np.savez(tmp_path / "bad.npz", x=np.zeros((7, 2, 5), np.int64), h0=np.zeros((1, 2, 6)))
    assert main(["validate", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "bad.npz")]) == 2
    assert "'x' holds int64; the graph declares float32" in capsys.readouterr().err


# ---- item 6: static-shape dynamo exports: random inputs follow the graph; no fallback crash -
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_validate_static_batch_first_export(dynamo, monkeypatch):
    from torch_models import Net, export, torch

    from lstm_engine import validate as v

    torch.manual_seed(0)
    net = Net(I=16, layers=1, batch_first=True, state=False).eval()
    proto = export(net, (torch.randn(1, 11, 16),), dynamo)
    r = _agrees(proto)
    assert r["inputs"] == {"x": [1, 11, 16]}
    monkeypatch.setattr(v, "_session", lambda proto: (None, "made unavailable by the test"))
    r = validate(proto)
    assert r["pass"] and r["fallback"] == "made unavailable by the test" and r["inputs"] == {"x": [1, 11, 16]}


@pytest.mark.parametrize("head", [False, True], ids=["lstm", "lstm+linear"])
def test_numpy_fallback_on_an_unbatched_export(head, monkeypatch):
    from torch_models import export

    from lstm_engine import validate as v

    net, args = _unbatched_net(head)
    proto = export(net, args, dynamo=False)
    monkeypatch.setattr(v, "_session", lambda proto: (None, "made unavailable by the test"))
    r = validate(proto)
    assert r["pass"] and r["fallback"] and r["inputs"] == {"x": [9, 6]}, r


# ---- item 5: sequence_lens held as a constant ------------------------------------------------
def _fixed_lens_graph(rng, lens, I=5, H=6):
    W, R = rng.standard_normal((1, 4 * H, I)) * 0.5, rng.standard_normal((1, 4 * H, H)) * 0.5
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (("W", W), ("R", R))]
    inits.append(numpy_helper.from_array(np.array(lens, np.int32), "lens"))
    node = helper.make_node("LSTM", ["x", "W", "R", "", "lens"], ["y", "hn", "cn"], hidden_size=H)
    vi = helper.make_tensor_value_info
    g = helper.make_graph([node], "g", [vi("x", TensorProto.FLOAT, ["T", len(lens), I])],
                          [vi(n, TensorProto.FLOAT, None) for n in ("y", "hn", "cn")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_constant_sequence_lens(rng):
    proto = _fixed_lens_graph(rng, [9, 4, 0])
    model, io = import_onnx(proto)
    assert io.fixed_lengths == (9, 4, 0) and not io.lengths
    r = _agrees(proto, streamed=False)  # offline only: lengths below T do not stream
    assert r["inputs"] == {"x": [9, 3, 5]}
    with pytest.warns(UserWarning, match=r"constant sequence_lens \[9, 4, 0\] are not part of the Model"):
        from_onnx(proto)


def test_constant_sequence_lens_must_be_lengths(rng):
    proto = _fixed_lens_graph(rng, [9, 4])
    proto.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([[9, 4]], np.int32), "lens"))
    with pytest.raises(le.ModelError, match="constant sequence_lens of shape"):
        import_onnx(proto)


# ---- item 3: bidirectional batch_first with a head ---------------------------------------------
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bidirectional_batch_first_with_head(dynamo, B):
    from torch_models import Net, export, numpy_args, torch, torch_out

    torch.manual_seed(0)
    net = Net(I=6, layers=1, bidirectional=True, batch_first=True, head=5, act="softmax").eval()
    args = net.example(B=B)
    proto = export(net, args, dynamo)
    feeds = dict(zip(["x", "h0", "c0"], numpy_args(args)))
    r = _agrees(proto, feeds, streamed=False)  # bidirectional: offline only
    model, io = import_onnx(proto)
    got = io.graph_outputs(*le.Engine(model).run(*io.engine_args(feeds, model)), model)
    for name, want in zip(["y", "hn", "cn"], torch_out(net, args)):
        assert np.abs(got[name] - want).max() <= 1e-4, name
    assert r["inputs"]["x"] == [B, 9, 6]


# ---- item 9: a refusal lists every unsupported op on the way to the outputs -------------------
def test_refusal_lists_every_unsupported_op(rng):
    pre = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
           helper.make_node("Abs", ["n"], ["x2"])]
    Wh = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "Wh")
    proto = _lstm_graph(rng, [7, 1, 5], [helper.make_node("MatMul", ["frames", "Wh"], ["y"])], [Wh],
                        pre=pre, lstm_in="x2")
    with pytest.raises(le.ModelError, match=r"outputs: Abs \(2 nodes\), Neg \(1 node\) \(.*select='lstm'"):
        import_onnx(proto)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_unbatched_embedding_export(dynamo):
    """Token ids of shape (T,) through Embedding + 2-layer LSTM + Linear + log_softmax."""
    from torch_models import export, torch

    class Tokens(torch.nn.Module):
        state = False

        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.lin = torch.nn.Embedding(20, 6), torch.nn.LSTM(6, 8, num_layers=2), torch.nn.Linear(8, 20)

        def forward(self, x):
            return torch.log_softmax(self.lin(self.lstm(self.emb(x))[0]), -1)

    torch.manual_seed(0)
    x = torch.randint(0, 20, (9,))
    proto = export(Tokens().eval(), (x,), dynamo)
    assert _agrees(proto, {"x": x.numpy()})["inputs"] == {"x": [9]}
