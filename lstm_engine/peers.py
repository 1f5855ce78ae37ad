"""The systems `lstm-engine bench` times: the engine and its peers (onnxruntime, PyTorch,
OpenVINO), each behind the same small interface, all computing the same model.

A system has `name`, `step(x)` (one frame, state carried), `run(X)` (a chunk, state
carried), `many(X)` (one frame for each of N streams in one call) and `precision`
(the arithmetic it actually runs, as the system itself reports it). Peers get the
model in their own format (an ONNX export, or nn.LSTM with the same weights), the
same thread count as the engine and the precision asked of the engine. With
precision="int8" each of onnxruntime and PyTorch also brings its own int8 LSTM
("onnxruntime int8", "pytorch int8"): dynamic quantisation of the same model, the way
either tool's documentation does it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings

import numpy as np

from .engine import Engine
from .errors import ModelError
from .model import ONNX_TO_TORCH, Model, permute_gates

PEERS = ("ort", "torch", "openvino")
ENGINE = "lstm-engine"
PER_ROW = " per row"  # name suffix of an int8 peer with one weight scale per gate row


class _EngineSystem:
    name = ENGINE

    def __init__(self, model, threads, precision):
        self._e = Engine(model, precision=precision, threads=threads)
        self.precision = precision
        self._s = self._e.open_stream()
        self.step, self.run = self._s.step, self._s.run
        self._streams = []

    def many(self, X):
        """One frame for each of len(X) streams (Engine.step_many)."""
        if len(self._streams) != len(X):
            self._streams = [self._e.open_stream() for _ in range(len(X))]
        return self._e.step_many(self._streams, X)


class _OnnxState:
    """Carries (h, c) between calls of an ONNX runtime like a Stream does, for one
    stream, and for a batch of streams in `many`."""

    def __init__(self, model: Model):
        from converters import to_onnx

        self.proto = to_onnx(model, with_state=True)
        self.model = model
        self.token = model.embedding is not None
        self.state = self._zeros(1)
        self.batch_state = None
        self.outs = ["Y"] + [n for li in range(len(model.layers)) for n in (f"hn_{li}", f"cn_{li}")]

    def _zeros(self, batch):
        state = {}
        for li, layer in enumerate(self.model.layers):
            state[f"h0_{li}"] = np.zeros((layer.num_directions, batch, layer.proj_size), np.float32)
            state[f"c0_{li}"] = np.zeros((layer.num_directions, batch, layer.hidden_size), np.float32)
        return state

    def _call(self, state, X):
        """X (T, B, ...) through the model from `state`, which is updated; returns Y (T, B, O)."""
        feed = dict(state)
        feed["X"] = np.asarray(X, np.int64 if self.token else np.float32)
        res = self._infer(feed)
        for k, name in enumerate(self.outs[1:]):
            state[name.replace("n_", "0_")] = res[1 + k]
        return res[0]

    def run(self, X):
        return self._call(self.state, np.asarray(X)[:, None])[:, 0]

    def step(self, x):
        return self.run(np.asarray(x)[None])[0]

    def many(self, X):
        """One frame for each of len(X) streams: one batched call."""
        if self.batch_state is None or len(self.batch_state["c0_0"][0]) != len(X):
            self.batch_state = self._zeros(len(X))
        return self._call(self.batch_state, np.asarray(X)[None])[0]


class _OrtSystem(_OnnxState):
    """The CPU provider on the float32 export: it has no bf16 mode, and an int8 peer
    would need a model quantized ahead of time, so it runs fp32 whatever was asked."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, model, threads, precision):
        import onnxruntime as ort

        super().__init__(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self._s = ort.InferenceSession(self._graph(), so, providers=["CPUExecutionProvider"])

    def _graph(self) -> bytes:
        return self.proto.SerializeToString()

    def _infer(self, feed):
        return self._s.run(self.outs, feed)


class _OrtInt8System(_OrtSystem):
    """onnxruntime's int8: quantize_dynamic on the same export turns each LSTM node into
    DynamicQuantizeLSTM (int8 W and R, x and h quantised to uint8 per call) and the head's
    MatMul into MatMulInteger, as PyTorch quantises nn.LSTM and nn.Linear; the embedding
    stays float32, as in PyTorch. One weight scale per direction (its default), or with
    per_channel one per gate row, as lstm-engine's int8."""

    name = "onnxruntime int8"
    precision = "u8s8 (DynamicQuantizeLSTM)"  # int8 weights times uint8 x and h

    def __init__(self, model, threads, precision, per_channel=False):
        self._per_channel = per_channel
        super().__init__(model, threads, precision)
        self.name += PER_ROW if per_channel else ""

    def _graph(self) -> bytes:
        import onnx
        from onnxruntime.quantization import quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "int8.onnx")
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing on the root logger
            try:
                quantize_dynamic(self.proto, path, op_types_to_quantize=["LSTM", "MatMul"],
                                 per_channel=self._per_channel)
            finally:
                root.setLevel(level)
            proto = onnx.load(path)
        ops = [n.op_type for n in proto.graph.node]
        if "LSTM" in ops or ops.count("DynamicQuantizeLSTM") != len(self.model.layers):
            raise ModelError(f"onnxruntime did not quantize every LSTM node (graph: {', '.join(ops)})")
        return proto.SerializeToString()


class _OpenVinoSystem(_OnnxState):
    name = "openvino"

    def __init__(self, model, threads, precision):
        import openvino as ov

        super().__init__(model)
        core = ov.Core()
        # Explicit, because OpenVINO's default is bf16 on CPUs with native bf16, which
        # would put our fp32 beside its bf16. Its CPU plugin refuses an int8 hint (int8
        # needs a model quantized ahead of time, e.g. by NNCF): int8 runs meet its f32.
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = core.compile_model(core.read_model(self.proto.SerializeToString(), b""), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                       "INFERENCE_PRECISION_HINT": hint})
        # what the plugin settled on, not what was asked: a CPU without bf16 runs f32
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = f"{ran} (INFERENCE_PRECISION_HINT)"
        self._req = compiled.create_infer_request()
        self._ports = [compiled.output(n) for n in self.outs]

    def _infer(self, feed):
        r = self._req.infer(feed)
        return [r[p] for p in self._ports]


class _TorchSystem:
    """torch.nn.LSTM (+ Embedding, Linear) with the same weights, state carried."""

    name = "pytorch"
    precision = "fp32"  # nn.LSTM with float32 weights, whatever was asked of the engine

    def __init__(self, model: Model, threads, precision):
        import torch

        for li, layer in enumerate(model.layers):
            d = layer.directions[0]
            if layer.direction != "forward" or layer.clip or layer.input_forget or d.peepholes is not None or \
                    any(a.name != n for a, n in zip(d.activations, ("Sigmoid", "Tanh", "Tanh"))):
                raise ModelError(f"layers[{li}] uses options nn.LSTM does not have")
        torch.set_num_threads(threads)
        self._torch = torch
        self._sizes = model.state_sizes
        self._net = torch.nn.ModuleDict({"layers": torch.nn.ModuleList(_torch_lstm(torch, layer)
                                                                       for layer in model.layers)})
        if model.head is not None:
            self._net["head"] = _torch_linear(torch, model.head)
        self._net.eval()
        self._act = None if model.head is None else model.head.activation
        self._emb = None if model.embedding is None else torch.from_numpy(model.embedding.weight)
        self._state = self._zeros(1)
        self._batch_state = None

    def _zeros(self, batch):
        return [(self._torch.zeros(1, batch, p), self._torch.zeros(1, batch, h)) for p, h in self._sizes]

    def _call(self, state, X):
        """X (T, B, ...) through the model from `state` (a list, updated); returns Y (T, B, O)."""
        torch = self._torch
        with torch.inference_mode():
            x = self._emb[torch.as_tensor(np.asarray(X, np.int64))] if self._emb is not None else torch.from_numpy(np.asarray(X))
            for k, m in enumerate(self._net["layers"]):
                x, state[k] = m(x, state[k])
            if "head" in self._net:
                x = self._net["head"](x)
                if self._act == "Softmax":
                    x = torch.softmax(x, -1)
                elif self._act == "LogSoftmax":
                    x = torch.log_softmax(x, -1)
                elif self._act is not None:
                    x = getattr(torch, self._act.lower())(x)
            return x.numpy()

    def run(self, X):
        return self._call(self._state, np.asarray(X)[:, None])[:, 0]

    def step(self, x):
        return self.run(np.asarray(x)[None])[0]

    def many(self, X):
        """One frame for each of len(X) streams: one batched call."""
        if self._batch_state is None or self._batch_state[0][1].shape[1] != len(X):
            self._batch_state = self._zeros(len(X))
        return self._call(self._batch_state, np.asarray(X)[None])[0]


def _torch_lstm(torch, layer):
    """One forward layer as nn.LSTM: gates reordered to PyTorch's, the bias folded into b_ih."""
    d, H = layer.directions[0], layer.hidden_size
    m = torch.nn.LSTM(layer.input_size, H, proj_size=layer.proj_size if d.proj is not None else 0)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(permute_gates(d.W, H, ONNX_TO_TORCH)))
        m.weight_hh_l0.copy_(torch.from_numpy(permute_gates(d.R, H, ONNX_TO_TORCH)))
        m.bias_ih_l0.copy_(torch.from_numpy(permute_gates(d.b, H, ONNX_TO_TORCH)))
        m.bias_hh_l0.zero_()
        if d.proj is not None:
            m.weight_hr_l0.copy_(torch.from_numpy(d.proj))
    return m


def _torch_linear(torch, head):
    """The dense head as nn.Linear (a module, so quantize_dynamic finds it)."""
    out, inputs = head.weight.shape
    m = torch.nn.Linear(inputs, out, bias=head.bias is not None)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(head.weight))
        if head.bias is not None:
            m.bias.copy_(torch.from_numpy(head.bias))
    return m


class _TorchInt8System(_TorchSystem):
    """PyTorch's int8: torch.ao.quantization.quantize_dynamic(net, {nn.LSTM, nn.Linear},
    dtype=torch.qint8), its documented recipe: int8 weights with one scale per tensor (or
    with per_channel one per gate row, as lstm-engine's int8), x and h quantised to uint8
    per call, on the quantized engine PyTorch chose for this CPU."""

    name = "pytorch int8"

    def __init__(self, model: Model, threads, precision, per_channel=False):
        if any(d.proj is not None for _, _, _, d in model.cells()):
            raise ModelError("PyTorch's quantized LSTM has no proj_size")
        super().__init__(model, threads, precision)
        torch = self._torch
        q = torch.ao.quantization
        spec = dict.fromkeys((torch.nn.LSTM, torch.nn.Linear), q.per_channel_dynamic_qconfig if per_channel
                             else q.default_dynamic_qconfig)
        with warnings.catch_warnings():  # torch.ao.quantization announces its deprecation at every call
            warnings.simplefilter("ignore")
            self._net = q.quantize_dynamic(self._net, spec, dtype=torch.qint8)
        self.name += PER_ROW if per_channel else ""
        self.precision = f"u8s8 (quantize_dynamic, {torch.backends.quantized.engine})"  # as onnxruntime


_PEER_CLASSES = {"ort": _OrtSystem, "torch": _TorchSystem, "openvino": _OpenVinoSystem}
_INT8_CLASSES = {"ort": _OrtInt8System, "torch": _TorchInt8System}  # with precision="int8", beside the above


def int8_peer(key, model, threads=1, per_channel=False):
    """onnxruntime's ("ort") or PyTorch's ("torch") int8 LSTM of `model`; per_channel: one
    weight scale per gate row instead of their default one per tensor."""
    return _INT8_CLASSES[key](model, threads, "int8", per_channel)


def engine_system(model, threads=1, precision="fp32"):
    """The engine behind the systems' interface (also the fp32 that errors are measured from)."""
    return _EngineSystem(model, threads, precision)


def systems(model, against=PEERS, precision="fp32", threads=1, progress=None) -> list:
    """The engine first, then each requested peer that can run here (and its int8 when
    precision="int8"); skips are reported."""
    out = [engine_system(model, threads, precision)]
    for key in against:
        int8 = precision.startswith("int8") and key in _INT8_CLASSES
        classes = [_PEER_CLASSES[key]] + ([_INT8_CLASSES[key]] if int8 else [])
        for cls in classes:
            try:
                out.append(cls(model, threads, precision))
            except ImportError as e:
                if progress:
                    progress(f"{key}: not installed, skipped ({e.name or e})")
                break
            except ModelError as e:
                if progress:
                    progress(f"{cls.name}: cannot run this model, skipped ({e})")
    return out
