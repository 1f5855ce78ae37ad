"""The example service on onnxruntime, the way such services are written today: one
batch-N InferenceSession of the model's ONNX export, each stream's (h, c) kept in numpy
arrays, gathered into the batch's h0/c0 and scattered back after every call.

`OrtEngine` has the part of Engine's interface the Batcher uses (model, open_stream,
restore, step_many), so the service, its batching and the load test are the same as
lstm-engine's and only the step differs:

    python benchmarks/ort_service.py --hidden 128 --port 8001
    lstm-engine loadtest ws://127.0.0.1:8001/stream --streams 200 --find-max
    python benchmarks/batcher_load.py --backend ort --streams 200     # in-process
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np


class OrtStream:
    __slots__ = ("h", "c")

    def __init__(self, h, c):
        self.h, self.c = h, c  # per layer: (H,) float32

    def snapshot(self) -> bytes:
        return np.concatenate(self.h + self.c).tobytes()


class OrtEngine:
    def __init__(self, model, threads: int = 1):
        import onnxruntime as ort

        from converters import to_onnx

        if not model.streamable or model.embedding is not None:
            raise ValueError("this peer takes forward models of float frames")
        self.model = model
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self._session = ort.InferenceSession(to_onnx(model, with_state=True).SerializeToString(), so,
                                             providers=["CPUExecutionProvider"])
        L = len(model.layers)
        self._outputs = ["Y"] + [f"{n}_{li}" for li in range(L) for n in ("hn", "cn")]
        self._sizes = [(layer.proj_size, layer.hidden_size) for layer in model.layers]

    def open_stream(self, state=None) -> OrtStream:
        if state is not None:
            h, c = state
            return OrtStream([np.array(a, np.float32) for a in h], [np.array(a, np.float32) for a in c])
        return OrtStream([np.zeros(P, np.float32) for P, _ in self._sizes],
                         [np.zeros(H, np.float32) for _, H in self._sizes])

    def restore(self, blob: bytes) -> OrtStream:
        flat = np.frombuffer(blob, np.float32)
        cuts = np.cumsum([P for P, _ in self._sizes] + [H for _, H in self._sizes])[:-1]
        parts = [a.copy() for a in np.split(flat, cuts)]
        return OrtStream(parts[:len(self._sizes)], parts[len(self._sizes):])

    def step_many(self, streams, X) -> np.ndarray:
        feed = {"X": np.asarray(X, np.float32)[None]}  # (T=1, N, I)
        for li in range(len(self._sizes)):
            feed[f"h0_{li}"] = np.stack([s.h[li] for s in streams])[None]  # (D=1, N, P)
            feed[f"c0_{li}"] = np.stack([s.c[li] for s in streams])[None]
        Y, *state = self._session.run(self._outputs, feed)
        for li in range(len(self._sizes)):
            hn, cn = state[2 * li][0], state[2 * li + 1][0]
            for s, h, c in zip(streams, hn, cn):
                s.h[li], s.c[li] = h, c
        return Y[0]


def main(argv=None):
    import gc

    import uvicorn

    from lstm_engine.bench import default_model

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    from ws_service import create_app

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    app = create_app(OrtEngine(default_model(args.hidden)))
    gc.freeze()  # as the example does: see its main()
    sys.setswitchinterval(0.0005)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
