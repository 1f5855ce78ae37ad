"""`Model` -> ONNX, so onnxruntime can check the engine on any model ONNX can express.

Graph interface:
    X            (T, B, I) float32, or (T, B) int64 token ids; (B, T, ...) for layout 1
    sequence_lens (B,) int32                      when with_lengths
    h0_<l>, c0_<l> (D, B, P) / (D, B, H) per layer when with_state
outputs:
    Y            (T, B, O) (or (B, T, O) for layout 1)
    hn_<l>, cn_<l> (D, B, P) / (D, B, H) per layer when with_state
Layout 1 is written as Transposes around layout-0 LSTM nodes, because onnxruntime
refuses the LSTM `layout` attribute.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lstm_engine import activations as acts
from lstm_engine.errors import ModelError

OPSET = 14
IR_VERSION = 9  # onnxruntime 1.31 reads up to IR 13; onnx 1.23 would write 14


def _lstm_inputs(layer):
    """ONNX W, R, B, P tensors of a layer: directions stacked on axis 0."""
    W = np.stack([d.W for d in layer.directions])
    R = np.stack([d.R for d in layer.directions])
    H = layer.hidden_size
    B = np.stack([np.concatenate([d.b, np.zeros(4 * H, np.float32)]) for d in layer.directions])
    peeps = [d.peepholes for d in layer.directions]
    P = None
    if any(p is not None for p in peeps):
        P = np.stack([np.zeros(3 * H, np.float32) if p is None else p for p in peeps])
    return W, R, B, P


def to_onnx(model, with_state: bool = False, with_lengths: bool = False) -> onnx.ModelProto:
    """An ONNX model computing what `Engine.run` computes (interface: module docstring).

    Raises ModelError for what ONNX cannot express (proj_size).
    """
    nodes, inits = [], []
    inputs, outputs = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    for li, layer in enumerate(model.layers):
        if any(d.proj is not None for d in layer.directions):
            raise ModelError(f"layers[{li}]: proj_size has no ONNX LSTM equivalent; "
                             "such a model cannot be exported to ONNX")
    token = model.embedding is not None
    x_shape = ["T", "B"] + ([] if token else [model.layers[0].input_size])
    if model.layout == 1:
        x_shape[0], x_shape[1] = x_shape[1], x_shape[0]
    inputs.append(helper.make_tensor_value_info(
        "X", TensorProto.INT64 if token else TensorProto.FLOAT, x_shape))
    cur = "X"
    if model.layout == 1:
        nodes.append(helper.make_node("Transpose", [cur], ["X_tb"], perm=[1, 0] if token else [1, 0, 2]))
        cur = "X_tb"
    if token:
        nodes.append(helper.make_node("Gather", [const("embedding", model.embedding.weight), cur],
                                      ["X_emb"], axis=0))
        cur = "X_emb"
    lens = ""
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
        lens = "sequence_lens"
    for li, layer in enumerate(model.layers):
        D, H, P = layer.num_directions, layer.hidden_size, layer.proj_size
        W, R, B, Pp = _lstm_inputs(layer)
        h0 = c0 = ""
        if with_state:
            h0, c0 = f"h0_{li}", f"c0_{li}"
            inputs.append(helper.make_tensor_value_info(h0, TensorProto.FLOAT, [D, "B", P]))
            inputs.append(helper.make_tensor_value_info(c0, TensorProto.FLOAT, [D, "B", H]))
        names, alphas, betas = acts.to_onnx_lists([a for d in layer.directions for a in d.activations])
        attrs = dict(hidden_size=H, direction=layer.direction, activations=names,
                     input_forget=int(layer.input_forget))
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
        if layer.clip is not None:
            attrs["clip"] = layer.clip
        ins = [cur, const(f"W_{li}", W), const(f"R_{li}", R), const(f"B_{li}", B), lens, h0, c0,
               "" if Pp is None else const(f"P_{li}", Pp)]
        while ins[-1] == "":
            ins.pop()
        outs = [f"Y_{li}", f"hn_{li}" if with_state else "", f"cn_{li}" if with_state else ""]
        while outs[-1] == "":
            outs.pop()
        nodes.append(helper.make_node("LSTM", ins, outs, name=f"lstm_{li}", **attrs))
        # (T, D, B, P) -> (T, B, D*P)
        nodes.append(helper.make_node("Transpose", [f"Y_{li}"], [f"Yt_{li}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt_{li}", const(f"shape_{li}", np.array([0, 0, -1], np.int64))],
                                      [f"Yl_{li}"]))
        cur = f"Yl_{li}"
        if with_state:
            outputs.append(helper.make_tensor_value_info(f"hn_{li}", TensorProto.FLOAT, [D, "B", P]))
            outputs.append(helper.make_tensor_value_info(f"cn_{li}", TensorProto.FLOAT, [D, "B", H]))
    if model.head is not None:
        hd = model.head
        nodes.append(helper.make_node("MatMul", [cur, const("head_wT", np.ascontiguousarray(hd.weight.T))], ["head_mm"]))
        cur = "head_mm"
        if hd.bias is not None:
            nodes.append(helper.make_node("Add", [cur, const("head_b", hd.bias)], ["head_z"]))
            cur = "head_z"
        if hd.activation is not None:
            kw = {"axis": -1} if hd.activation in ("Softmax", "LogSoftmax") else {}
            nodes.append(helper.make_node(hd.activation, [cur], ["head_y"], **kw))
            cur = "head_y"
    if model.layout == 1:
        nodes.append(helper.make_node("Transpose", [cur], ["Y_bt"], perm=[1, 0, 2]))
        cur = "Y_bt"
    nodes.append(helper.make_node("Identity", [cur], ["Y"]))
    y_shape = ["B", "T"] if model.layout == 1 else ["T", "B"]
    outputs.insert(0, helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape + [model.output_size]))
    graph = helper.make_graph(nodes, "lstm_engine", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lstm-engine")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return proto
