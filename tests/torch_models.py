"""Small PyTorch modules and exports shared by the converter tests."""
import contextlib
import io
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnx  # noqa: E402


class Net(torch.nn.Module):
    """nn.LSTM with optional embedding in front and Linear head (+ activation) on top."""

    def __init__(self, I=6, H=10, layers=2, bidirectional=False, batch_first=False, vocab=None,
                 head=None, act=None, state=True):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, I) if vocab else None
        self.lstm = torch.nn.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = torch.nn.Linear(H * (2 if bidirectional else 1), head) if head else None
        self.act, self.state = act, state
        self.D, self.L, self.H, self.vocab, self.I, self.bf = 2 if bidirectional else 1, layers, H, vocab, I, batch_first

    def forward(self, x, h0=None, c0=None):
        if self.emb is not None:
            x = self.emb(x)
        y, (h, c) = self.lstm(x, (h0, c0)) if h0 is not None else self.lstm(x)
        if self.head is not None:
            y = self.head(y)
            y = {"softmax": lambda z: torch.softmax(z, -1), "logsoftmax": lambda z: torch.log_softmax(z, -1),
                 "sigmoid": torch.sigmoid, None: lambda z: z}[self.act](y)
        return (y, h, c) if self.state else y

    def example(self, T=9, B=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        shape = (B, T) if self.bf else (T, B)
        x = torch.randint(0, self.vocab, shape, generator=g) if self.vocab else torch.randn(*shape, self.I, generator=g)
        if not self.state:
            return (x,)
        h0 = torch.randn(self.L * self.D, B, self.H, generator=g)
        return x, h0, torch.randn(self.L * self.D, B, self.H, generator=g)


def export(net, args, dynamo: bool) -> onnx.ModelProto:
    names = ["x", "h0", "c0"][:len(args)]
    outs = ["y", "hn", "cn"][:3 if net.state else 1]
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                proto = torch.onnx.export(net, args, dynamo=True, input_names=names, output_names=outs).model_proto
            else:
                f = io.BytesIO()
                torch.onnx.export(net, args, f, dynamo=False, input_names=names, output_names=outs)
                proto = onnx.load_from_string(f.getvalue())
    finally:
        logging.disable(logging.NOTSET)
    proto.ir_version = min(proto.ir_version, 10)
    return proto


def ort_session(proto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def numpy_args(args):
    return [a.numpy() for a in args]


def torch_out(net, args):
    with torch.no_grad():
        out = net(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


__all__ = ["Net", "export", "ort_session", "numpy_args", "torch_out", "torch", "np"]
