"""GraphIO: which graph inputs and outputs of an imported ONNX model are the engine's
frames, lengths, state and output, and how to convert between the two."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstm_engine.model import Model


@dataclass
class GraphIO:
    """How a graph's inputs and outputs map onto Engine.run / Stream state."""

    x: str = ""  # graph input of frames or token ids
    layout: int = 0  # 0: x is (T, B, ...), 1: (B, T, ...)
    batched: bool = True  # False when x has no batch axis
    lengths: str = ""  # graph input of sequence_lens, if any
    fixed_lengths: tuple = ()  # sequence_lens the graph holds as a constant, if any
    # state tensors: lists of (graph name, first cell, cells), cells in the engine's state order
    h0: list = field(default_factory=list)
    c0: list = field(default_factory=list)
    y: str = ""  # graph output of the model output
    y_axes: tuple = ()  # its axes: T, B, then F (stage features) or O (head); or an LSTM's
    #                     raw (T, D, B, P) / (B, T, D, P), where D*P is the engine's F
    hn: list = field(default_factory=list)
    cn: list = field(default_factory=list)
    state_axes: tuple = ("S", "B", "P")  # axes of state tensors; ("B", "S", "P") for layout 1
    extras: list = field(default_factory=list)  # graph outputs not mapped (select="lstm")

    def engine_args(self, feeds: dict, model: Model):
        """Graph feeds -> (X, state, lengths) for Engine.run."""
        X = np.asarray(feeds[self.x])
        state = None
        if self.h0 or self.c0:
            lead = () if not self.batched else (X.shape[0 if self.layout == 1 else 1],)
            state = tuple(self._cells(feeds, runs, [lead + (sz[k],) for sz in model.state_sizes])
                          for k, runs in enumerate((self.h0, self.c0)))
        lengths = np.asarray(feeds[self.lengths]) if self.lengths else \
            np.array(self.fixed_lengths, np.int64) if self.fixed_lengths else None
        return X, state, lengths

    def _cells(self, feeds, runs, shapes) -> list:
        """One array per cell of h (or c): from the graph inputs of runs, zeros where the
        LSTM leaves that state out (ONNX: a missing initial_h or initial_c is zero)."""
        cells = [np.zeros(shape, np.float32) for shape in shapes]
        s = self.state_axes.index("S")
        for name, first, n in runs:
            for k in range(n):
                cells[first + k] = np.take(np.asarray(feeds[name]), k, axis=s)
        return cells

    def graph_outputs(self, Y, state, model: Model) -> dict:
        """Engine.run results -> {graph output name: array in the graph's layout}."""
        out = {}
        if self.y:
            lead = ("B", "T") if model.layout == 1 else ("T", "B")
            axes, arr = list(lead if Y.ndim == 3 else lead[:1]), Y
            if "B" in axes and "B" not in self.y_axes:  # the graph squeezed a batch of 1
                arr, axes = arr.squeeze(axes.index("B")), [a for a in axes if a != "B"]
            if "D" in self.y_axes:  # the raw LSTM output: split F into (D, P)
                top = model.layers[-1]
                arr = arr.reshape(arr.shape[:-1] + (top.num_directions, top.proj_size))
                axes += ["D", "P"]
            else:
                axes.append(self.y_axes[-1])
            real = [a for a in self.y_axes if a != "1"]
            arr = np.transpose(arr, [axes.index(a) for a in real])
            out[self.y] = arr.reshape([1 if a == "1" else arr.shape[real.index(a)] for a in self.y_axes])
        s = self.state_axes.index("S")
        for runs, arrays in ((self.hn, state[0]), (self.cn, state[1])):
            for name, first, n in runs:
                part = arrays[first:first + n]
                out[name] = np.stack(part, axis=s if np.ndim(part[0]) == 2 else 0)
        return out
