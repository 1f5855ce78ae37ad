"""The systems `lstm-engine bench` times: the engine and its peers (onnxruntime, PyTorch,
OpenVINO), each behind the same small interface, all computing the same model.

A system has `name`, `step(x)` (one frame, state carried), `run(X)` (a chunk, state
carried), `many(X)` (one frame for each of N streams in one call) and `precision`
(the arithmetic it actually runs, as the system itself reports it). Peers get the
model in their own format (an ONNX export, or nn.LSTM with the same weights), the
same thread count as the engine and the precision asked of the engine.
"""
from __future__ import annotations

import numpy as np

from .engine import Engine
from .errors import ModelError
from .model import ONNX_TO_TORCH, Model, permute_gates

PEERS = ("ort", "torch", "openvino")
ENGINE = "lstm-engine"


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
        self._s = ort.InferenceSession(self.proto.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def _infer(self, feed):
        return self._s.run(self.outs, feed)


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
        self._layers = []
        for layer in model.layers:
            d = layer.directions[0]
            H = layer.hidden_size
            m = torch.nn.LSTM(layer.input_size, H, proj_size=layer.proj_size if d.proj is not None else 0)
            with torch.no_grad():
                m.weight_ih_l0.copy_(torch.from_numpy(permute_gates(d.W, H, ONNX_TO_TORCH)))
                m.weight_hh_l0.copy_(torch.from_numpy(permute_gates(d.R, H, ONNX_TO_TORCH)))
                m.bias_ih_l0.copy_(torch.from_numpy(permute_gates(d.b, H, ONNX_TO_TORCH)))
                m.bias_hh_l0.zero_()
                if d.proj is not None:
                    m.weight_hr_l0.copy_(torch.from_numpy(d.proj))
            self._layers.append(m.eval())
        self._state = self._zeros(1)
        self._batch_state = None
        self._emb = None if model.embedding is None else torch.from_numpy(model.embedding.weight)
        self._head = None
        if model.head is not None:
            self._head = (torch.from_numpy(model.head.weight),
                          None if model.head.bias is None else torch.from_numpy(model.head.bias), model.head.activation)

    def _zeros(self, batch):
        return [(self._torch.zeros(1, batch, m.proj_size or m.hidden_size), self._torch.zeros(1, batch, m.hidden_size))
                for m in self._layers]

    def _call(self, state, X):
        """X (T, B, ...) through the model from `state` (a list, updated); returns Y (T, B, O)."""
        torch = self._torch
        with torch.inference_mode():
            x = self._emb[torch.as_tensor(np.asarray(X, np.int64))] if self._emb is not None else torch.from_numpy(np.asarray(X))
            for k, m in enumerate(self._layers):
                x, state[k] = m(x, state[k])
            if self._head is not None:
                w, b, act = self._head
                x = torch.nn.functional.linear(x, w, b)
                if act == "Softmax":
                    x = torch.softmax(x, -1)
                elif act == "LogSoftmax":
                    x = torch.log_softmax(x, -1)
                elif act is not None:
                    x = getattr(torch, act.lower())(x)
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


_PEER_CLASSES = {"ort": _OrtSystem, "torch": _TorchSystem, "openvino": _OpenVinoSystem}


def systems(model, against=PEERS, precision="fp32", threads=1, progress=None) -> list:
    """The engine first, then each requested peer that can run here; skips are reported."""
    out = [_EngineSystem(model, threads, precision)]
    for key in against:
        try:
            out.append(_PEER_CLASSES[key](model, threads, precision))
        except ImportError as e:
            if progress:
                progress(f"{key}: not installed, skipped ({e.name or e})")
        except ModelError as e:
            if progress:
                progress(f"{key}: cannot run this model, skipped ({e})")
    return out
