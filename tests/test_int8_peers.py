"""onnxruntime's and PyTorch's int8 LSTMs as bench peers (lstm_engine/peers.py): what
they quantise, that they carry state like the other peers, and when they are left out."""
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand
from lstm_engine.bench import error_vs
from lstm_engine.errors import ModelError
from lstm_engine.peers import PER_ROW, engine_system, int8_peer, systems

MODULES = {"ort": "onnxruntime", "torch": "torch"}
KEYS = pytest.mark.parametrize("key", list(MODULES))


def peer(key, model, **kw):
    pytest.importorskip(MODULES[key])
    return int8_peer(key, model, **kw)


def STEP(s, x):
    return s.step(x)


def MANY(s, x):
    return s.many(x)


@KEYS
def test_carries_state_step_by_step_and_per_stream(rng, key):
    """Streamed one step per call, and two frames per stream through `many`, an int8 peer
    stays within 1e-2 of fp32, where dropping the state between calls moves outputs by
    more than 1e-1."""
    model = make_model(rng, 6, (24, 16))
    X = rand(rng, 40, 6)
    fresh = np.stack([engine_system(model).step(x) for x in X])
    streamed = engine_system(model).run(X)
    assert np.abs(fresh - streamed).max() > 0.1
    assert error_vs(engine_system(model), {key: peer(key, model)}, STEP, list(X))[key]["max_abs"] <= 1e-2
    assert error_vs(engine_system(model), {key: peer(key, model)}, MANY, [X[:3], X[3:6]])[key]["max_abs"] <= 1e-2


@KEYS
def test_per_row_scales(rng, key):
    """per_channel gives one weight scale per gate row: beside one row 50x larger than the
    rest (an outlier), one scale per tensor leaves the other rows a few levels."""
    model = make_model(rng, 8, (32,))
    d = model.layers[0].directions[0]
    W, R = d.W.copy(), d.R.copy()
    W[0] *= 50
    R[0] *= 50
    model = le.Model([le.Layer([le.Direction(W, R, d.b)])])
    tensor, row = peer(key, model), peer(key, model, per_channel=True)
    assert row.name == tensor.name + PER_ROW
    e = error_vs(engine_system(model), {"tensor": tensor, "row": row}, STEP, list(rand(rng, 50, 8)))
    assert e["row"]["max_abs"] < e["tensor"]["max_abs"] / 2 and e["row"]["mean_abs"] < e["tensor"]["mean_abs"] / 2


def test_onnxruntime_int8_refuses_a_graph_left_in_float(rng, monkeypatch):
    """The peer is only onnxruntime's int8 if every LSTM node became DynamicQuantizeLSTM."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    real = quantization.quantize_dynamic
    monkeypatch.setattr(quantization, "quantize_dynamic",
                        lambda proto, path, **kw: real(proto, path, **{**kw, "op_types_to_quantize": ["MatMul"]}))
    with pytest.raises(ModelError, match="did not quantize every LSTM node"):
        int8_peer("ort", make_model(rng, 4, (8,), head=2))


def test_pytorch_int8_skips_projections(rng):
    pytest.importorskip("torch")
    model = make_model(rng, 4, (8,), proj=3)
    with pytest.raises(ModelError, match="proj_size"):
        int8_peer("torch", model)
    said = []
    names = [s.name for s in systems(model, ("torch",), "int8", progress=said.append)]
    assert names == ["lstm-engine", "pytorch"]
    assert said == ["pytorch int8: cannot run this model, skipped (PyTorch's quantized LSTM has no proj_size)"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_int8_peers_only_in_int8_runs(rng, precision):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    names = [s.name for s in systems(make_model(rng, 4, (8,)), ("ort", "torch"), precision)]
    assert names == ["lstm-engine", "onnxruntime", "pytorch"]
