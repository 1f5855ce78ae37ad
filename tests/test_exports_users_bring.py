"""Exports users bring (issue 12): each graph is built here, imported, and run offline and
frame by frame against onnxruntime on the same file (lstm_engine.validate does both)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstm_engine as le
from converters import import_onnx
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
