"""ONNX importer, the LSTM node: its weights become a Layer, its inputs bind the model's
frames, lengths and state."""
from __future__ import annotations

import numpy as np

from lstm_engine import activations as acts
from lstm_engine.errors import ModelError
from lstm_engine.model import Direction, Layer, Model

from .onnx_common import _ALL, _is_run, _text
from .onnx_values import Const, Data, ZeroState


class LstmNode:
    """Handlers of _Importer (onnx_import.py), which gives the label helpers they call."""

    def _op_LSTM(self, node, ins, at):
        ins = ins + [None] * (8 - len(ins))
        x, W, R, B, lens, h0, c0, P = ins[:8]
        where = f"LSTM node {node.name!r}"
        for nm, v, k in (("W", W, 1), ("R", R, 2), ("B", B, 3), ("P", P, 7)):
            if v is not None and not isinstance(v, Const):
                src = node.input[k]
                raise ModelError(f"{where}: input {nm} comes from run-time graph input {src!r}; bind it "
                                 f"with from_onnx(src, constants={{{src!r}: array}})")
        layout = at.get("layout", 0)
        if layout not in (0, 1):
            raise ModelError(f"{where}: layout={layout}; ONNX defines 0 and 1")
        direction = _text(at.get("direction", b"forward"))
        D = 2 if direction == "bidirectional" else 1
        Wv, Rv = self._weights(W, f"{where} W"), self._weights(R, f"{where} R")
        if Wv.ndim != 3 or Rv.ndim != 3 or Wv.shape[0] != D or Rv.shape[0] != D:
            raise ModelError(f"{where}: W {Wv.shape} / R {Rv.shape} do not fit direction {direction!r}")
        H = Wv.shape[1] // 4
        if "hidden_size" in at and at["hidden_size"] != H:
            raise ModelError(f"{where}: hidden_size={at['hidden_size']} but W has {Wv.shape[1]} rows")
        Bv = np.zeros((D, 8 * H), np.float32) if B is None else self._weights(B, f"{where} B")
        Pv = None if P is None else self._weights(P, f"{where} P")
        names = [_text(n) for n in at.get("activations", ["Sigmoid", "Tanh", "Tanh"] * D)]
        if len(names) != 3 * D:
            raise ModelError(f"{where}: {len(names)} activations for {D} direction(s); expected {3 * D}")
        try:
            act_list = acts.from_onnx_lists(names, at.get("activation_alpha", []), at.get("activation_beta", []))
        except KeyError as e:
            raise ModelError(f"{where}: unsupported activation {e.args[0]!r}; supported: "
                             f"{', '.join(acts.NAMES)}") from None
        except ValueError as e:  # a NaN, infinite or float32-overflowing alpha/beta
            raise ModelError(f"{where}: activation_alpha/activation_beta: {e}") from None
        try:
            dirs = [Direction(Wv[d], Rv[d], Bv[d, :4 * H] + Bv[d, 4 * H:],
                              None if Pv is None else Pv[d], None, tuple(act_list[3 * d:3 * d + 3]))
                    for d in range(D)]
            layer = Layer(dirs, direction, at.get("clip"), at.get("input_forget", 0))
            Model([layer])  # validates shapes and options, naming what is wrong
        except ModelError as e:
            raise ModelError(f"{where}: {e}") from None
        except (IndexError, ValueError) as e:
            raise ModelError(f"{where}: inconsistent weight shapes ({e})") from None
        stage = len(self.layers)
        self._bind_frames(x, layout, where, stage, layer)
        first_cell = sum(l.num_directions for l in self.layers)
        self.layers.append(layer)
        cells = tuple(range(first_cell, first_cell + D))
        self._check_lens(lens, where)
        self._check_state(h0, "h", cells, layout, where, node.input[5] if len(node.input) > 5 else "")
        self._check_state(c0, "c", cells, layout, where, node.input[6] if len(node.input) > 6 else "")
        Tl, Bl = ("T", "B") if layout == 0 else ("B", "T")
        y = Data("lstm_y", (Tl, "D", Bl, "P") if layout == 0 else ("B", "T", "D", "P"), stage=stage + 1)
        st_axes = ("S", "B", "P") if layout == 0 else ("B", "S", "P")
        yh = Data("state", st_axes, which="h", cells=cells)
        yc = Data("state", st_axes, which="c", cells=cells)
        return [self._norm(y), yh, yc]

    def _weights(self, v: Const, what) -> np.ndarray:
        """A constant that becomes an LSTM's weights. The file holds each constant once, so
        it may become weights once for free; every further use (another layer, W as R)
        makes weights the file does not hold, and counts against the budget: a small file
        whose hundred LSTMs share one W would otherwise be a model a hundred times its size."""
        if id(v.value) in self._weights_used:
            self.budget.spend(v.value.size, what)
        self._weights_used.add(id(v.value))
        return np.asarray(v.value)

    def _bind_frames(self, x, layout, where, stage, layer):
        if isinstance(x, Data) and x.kind == "raw3":
            x = Data("frames", x.axes[:2] + ("F",), stage=0, source=x.source)
        if not (isinstance(x, Data) and x.kind == "frames"):
            if self.select and stage == 0 and not isinstance(x, Data):
                return  # select="lstm": whatever feeds the first LSTM is the input
            raise ModelError(f"{where}: its input X is not the model input or the previous LSTM's output")
        if x.stage != stage:
            raise ModelError(f"{where}: its input is not the output of the LSTM before it")
        axes = list(x.axes)
        if len(axes) != 3 or self._lab(axes[2]) != "F":
            raise ModelError(f"{where}: input axes {self._axes(x)} are not (time, batch, features)")
        want = ("T", "B") if layout == 0 else ("B", "T")
        for a, w in zip(axes[:2], want):
            lab = self._lab(a)
            if lab.startswith("x"):
                self.bind[a] = w
            elif lab == "1" and w == "B" and stage == 0:
                self.io.batched = False  # x has no batch axis: an Unsqueeze made it
            elif lab == "1" and w == "B" and self._placeholder("B") == 1:
                pass  # a batch of 1 that a Reshape between layers merged away
            elif lab != w:
                raise ModelError(f"{where}: input axes {self._axes(x)} do not match layout={layout}")
        if stage == 0 and x.source and not self.io.x:
            self.io.x = x.source

    def _check_lens(self, lens, where):
        """Every LSTM of the stack takes the same sequence_lens, or none does."""
        have = self.io.lengths or self.io.fixed_lengths
        if lens is None:
            if have:
                raise ModelError(f"{where}: has no sequence_lens while the LSTM before it has")
            return
        key = self._lens_key(lens, where)
        if self.layers[:-1] and not have:
            raise ModelError(f"{where}: takes sequence_lens while the LSTM before it does not")
        if have and have != key:
            raise ModelError(f"{where}: uses a different sequence_lens than the LSTM before it")
        if isinstance(key, str):
            self.io.lengths = key
        else:
            self.io.fixed_lengths = key

    @staticmethod
    def _lens_key(lens, where):
        """sequence_lens as the graph input that feeds it, or the lengths a constant fixes."""
        if isinstance(lens, Data) and lens.kind == "ids" and len(lens.axes) == 1 and lens.source:
            return lens.source
        if isinstance(lens, Const):
            v = np.asarray(lens.value)
            if v.dtype.kind not in "iu" or v.ndim != 1 or not v.size or np.any(v < 0):
                raise ModelError(f"{where}: constant sequence_lens of shape {v.shape} and type {v.dtype}; "
                                 "ONNX takes one non-negative integer per sequence")
            return tuple(int(n) for n in v)
        raise ModelError(f"{where}: sequence_lens is computed in the graph, which is not supported")

    def _check_state(self, v, which, cells, layout, where, name):
        if v is None or isinstance(v, ZeroState) or (isinstance(v, Const) and not np.any(v.value)):
            mode = False
        elif self._stateish(v):
            d = self._as_state(v, 0 if layout == 0 else 1)
            local = d.cells if len(d.cells) != _ALL else range(len(cells))  # whole input
            want = ("S", "B", "P") if layout == 0 else ("B", "S", "P")
            labs = [self._lab(a) for a in d.axes]
            if not self.io.batched and len(labs) == 3 and labs[want.index("B")] == "1":
                labs[want.index("B")] = "B"  # an unbatched model's (S, P) state, unsqueezed for the LSTM
            self.io.state_axes = want if self.io.batched else ("S", "P")
            axes = tuple("S" if lab == "1" and len(local) == 1 else lab for lab in labs)
            if axes != want or len(local) != len(cells) or not _is_run(local) or not d.source:
                raise ModelError(f"{where}: initial_{which} is not a run of {len(cells)} cells of a graph "
                                 "input (the engine's state order is layer-major, forward before reverse)")
            offset = cells[0] - local[0]
            runs = getattr(self.io, which + "0")
            known = {name: first - lo for name, first, lo in ((r[0], r[1], self._run_start[r[0]]) for r in runs)}
            if known.get(d.source, offset) != offset:
                raise ModelError(f"{where}: initial_{which} takes cells of {d.source!r} at another offset "
                                 "than the LSTMs before it")
            if d.source not in known:
                self._run_start[d.source] = local[0]
                runs.append([d.source, cells[0], 0])
            run = next(r for r in runs if r[0] == d.source)
            run[2] = cells[-1] - run[1] + 1
            mode = True
        else:
            raise ModelError(f"{where}: initial_{which} ({name!r}) is neither zero nor a run of state cells "
                             "from a graph input")
        if which == "h":
            if self.state_mode is not None and self.state_mode != mode:
                raise ModelError(f"{where}: some LSTMs start from the graph's state inputs and some from zero")
            self.state_mode = mode
