"""ONNX importer, the glue ops: Transpose, Squeeze, Reshape, Shape arithmetic, state slicing, ...
They only move labels (onnx_import.py) around."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from lstm_engine.model import Embedding

from .onnx_common import _ALL, _MAX_RANK, _prod, _Refuse
from .onnx_files import tensor
from .onnx_values import Const, Data, ShapeVec, ZeroState


class GlueOps:
    """Handlers of _Importer (onnx_import.py), which gives the label helpers they call."""

    def _op_Identity(self, node, ins, at):
        return ins[0]

    _op_Dropout = _op_Identity

    def _op_Cast(self, node, ins, at):
        v = ins[0]
        to = at.get("to")
        if isinstance(v, ShapeVec):
            return v
        if isinstance(v, Data) and v.kind == "ids":
            return v
        if isinstance(v, Data) and to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                          onnx.TensorProto.FLOAT16):
            return v
        raise _Refuse("Cast of run-time data to a non-float type")

    def _op_Transpose(self, node, ins, at):
        v = ins[0]
        if not isinstance(v, Data):
            raise _Refuse("Transpose of a non-tensor value")
        perm = at.get("perm", list(range(len(v.axes)))[::-1])
        if sorted(perm) != list(range(len(v.axes))):
            raise _Refuse(f"Transpose perm {perm[:_MAX_RANK]} is not a permutation of {len(v.axes)} axes")
        return self._norm(replace(v, axes=tuple(v.axes[p] for p in perm)))

    def _squeezable(self, v, a):
        lab = self._lab(a)
        return lab == "1" or (lab == "D" and self._size(v, "D") == 1) or (lab == "S" and len(v.cells) == 1) or \
            (lab == "B" and self._placeholder("B") == 1)  # unbatched, or the graph fixes B at 1

    def _op_Squeeze(self, node, ins, at):
        v = ins[0]
        if not isinstance(v, Data):
            raise _Refuse("Squeeze of a non-tensor value")
        axes = at.get("axes") if self.opset < 13 else (self._int_list(ins[1], "Squeeze axes") if len(ins) > 1 and ins[1] is not None else None)
        if axes is None:
            axes = [k for k, a in enumerate(v.axes) if self._squeezable(v, a)]
        axes = self._axes_set(axes, len(v.axes), "Squeeze axis")
        for a in axes:
            if not self._squeezable(v, v.axes[a]):
                raise _Refuse(f"Squeeze of axis {self._lab(v.axes[a])}, which is not of size 1")
        return self._norm(replace(v, axes=tuple(x for k, x in enumerate(v.axes) if k not in axes)))

    def _op_Unsqueeze(self, node, ins, at):
        v = ins[0]
        axes = at.get("axes") if self.opset < 13 else self._int_list(ins[1], "Unsqueeze axes")
        if axes is None:
            raise _Refuse("Unsqueeze without axes")
        if isinstance(v, ShapeVec) and len(v.dims) == 1 and axes in ([0], [-1]):
            return v  # scalar -> 1-vector: ShapeVec does not track rank 0
        if not isinstance(v, Data):
            raise _Refuse("Unsqueeze of a non-tensor value")
        out = list(v.axes)
        for a in self._axes_set(axes, len(out) + len(axes), "Unsqueeze axis"):
            out.insert(a, "1")
        return replace(v, axes=tuple(out))

    def _op_Reshape(self, node, ins, at):
        v, spec = ins[0], ins[1]
        if isinstance(v, ShapeVec):  # exporters flatten shape vectors with Reshape(-1)
            if isinstance(spec, Const) and np.asarray(spec.value).reshape(-1).tolist() in ([-1], [len(v.dims)]):
                return v
            raise _Refuse("Reshape of a shape vector")
        if not isinstance(v, Data):
            raise _Refuse("Reshape of a non-tensor value")
        if isinstance(spec, ShapeVec):
            target = [self._placeholder(d) if isinstance(d, str) else d for d in spec.dims]
        else:
            target = self._int_list(spec, "Reshape shape")
        sizes = [self._size(v, a) for a in v.axes]
        if any(isinstance(t, str) for t in target):
            raise _Refuse("Reshape to a shape computed from unknown dims")
        target = self._reshape_target(target, sizes, at.get("allowzero", 0))
        labels = [self._lab(a) for a in v.axes]
        dynamic = any(l in ("T", "B", "x0", "x1") and self._placeholder(l) > 100000 for l in labels)
        hint = (f" (target {target} fixes a size the graph input leaves dynamic: the graph only runs "
                "at the size it was exported with; export with static shapes)") if dynamic else ""
        if _prod(target) != _prod(sizes):
            raise _Refuse("Reshape whose sizes do not match" + hint)
        # group consecutive input axes into each output dim (row-major order is kept)
        out, i = [], 0
        for t in target:
            group, prod = [], 1
            while i < len(sizes) and (prod < t or (sizes[i] == 1 and prod == t and t != 1)):
                group.append(labels[i])
                prod *= sizes[i]
                i += 1
            if prod != t:
                raise _Refuse("Reshape that splits an axis" + hint)
            real = [g for g in group if not (g == "1" or self._size(v, g) == 1)]
            if not real:
                out.append(group[0] if len(group) == 1 else "1")
            elif len(real) == 1:
                out.append(next(a for a, l in zip(v.axes[i - len(group):i], group) if l == real[0]))
            elif real == ["D", "P"] and v.kind == "lstm_y":
                out.append("F")
            else:
                raise _Refuse(f"Reshape that merges axes {real}")
        while i < len(sizes):  # trailing unit axes
            if sizes[i] != 1:
                raise _Refuse("Reshape that drops an axis")
            i += 1
        kind = "frames" if v.kind == "lstm_y" and "F" in out else v.kind
        return self._norm(replace(v, kind=kind, axes=tuple(out)))

    @staticmethod
    def _reshape_target(target, sizes, allowzero) -> list:
        """Reshape's shape with 0 (copy a dim, unless allowzero) and -1 (infer) resolved, as
        ONNX defines them; _Refuse for shapes ONNX calls invalid."""
        if any(t < -1 for t in target) or target.count(-1) > 1 or (allowzero and 0 in target and -1 in target):
            raise _Refuse(f"Reshape to {target}: not a valid shape")
        if not allowzero:
            if any(t == 0 and k >= len(sizes) for k, t in enumerate(target)):
                raise _Refuse(f"Reshape to {target}: a 0 copies a dim the input does not have")
            target = [sizes[k] if t == 0 else t for k, t in enumerate(target)]
        if -1 in target:
            known = _prod([t for t in target if t != -1])
            if known == 0 or _prod(sizes) % known:
                raise _Refuse(f"Reshape to {target}: no size for -1 fits {_prod(sizes)} elements")
            target[target.index(-1)] = _prod(sizes) // known
        return target

    def _op_Shape(self, node, ins, at):
        v = ins[0]
        if not isinstance(v, Data):
            raise _Refuse("Shape of a non-tensor value")
        # time/batch stay symbolic (raw labels), resolved when a Reshape uses them
        dims = [a if self._lab(a) in ("T", "B", "x0", "x1") else self._size(v, a) for a in v.axes]
        s, e = at.get("start", 0), at.get("end", len(dims))
        return ShapeVec(tuple(dims[s:e]))

    def _shape_gather(self, v, idx):
        dims = self._pick(v.dims, self._int_list(idx, "Gather index"), "Gather index")
        return ShapeVec(tuple(dims))

    @staticmethod
    def _pick(seq, idx, what) -> tuple:
        """seq[i] for each i of idx (negative from the end, as ONNX Gather); _Refuse out of range."""
        n = len(seq)
        if any(not -n <= i < n for i in idx):
            raise _Refuse(f"{what} out of range for {n} entries")
        return tuple(seq[i] for i in idx)

    def _op_Gather(self, node, ins, at):
        data, idx = ins[0], ins[1]
        axis = at.get("axis", 0)
        if isinstance(data, ShapeVec):
            return self._shape_gather(data, idx)
        if isinstance(data, Const) and isinstance(idx, Data) and idx.kind == "ids" and axis == 0:
            if self.embedding is not None or self.layers:
                raise _Refuse("a second embedding lookup")
            self.embedding = Embedding(np.asarray(data.value))
            self.io.x = idx.source
            return Data("frames", idx.axes + ("F",), stage=0, source=idx.source)
        if self._stateish(data) and isinstance(idx, Const):
            d = self._as_state(data, axis)
            k = np.asarray(idx.value)
            if k.dtype.kind not in "iu" or k.ndim > 1:
                raise _Refuse(f"Gather of state cells by indices of shape {k.shape} and type {k.dtype}")
            cells = self._pick(d.cells, [int(i) for i in k.reshape(-1)], "Gather index")
            axis = self._axis(axis, len(d.axes), "Gather axis")
            axes = d.axes if k.ndim else tuple(a for j, a in enumerate(d.axes) if j != axis)
            return replace(d, cells=cells, axes=axes)
        raise _Refuse("Gather on run-time data other than an embedding or a state cell")

    def _stateish(self, v) -> bool:
        """v is a state, or a graph input that may be one (used as state it is h0 or c0)."""
        return isinstance(v, Data) and (v.kind in ("state", "raw3") or self._is_input2(v))

    def _is_input2(self, v: Data) -> bool:
        """A 2-D float graph input, frames until used as state: (S, P), an unbatched model's."""
        return v.kind == "frames" and v.stage == 0 and bool(v.source) and \
            len(self.input_dims.get(v.source) or ()) == 2

    def _as_state(self, v: Data, cell_axis):
        """A raw 3-D graph input used as (S, B, P) state (or 2-D as (S, P), unbatched): it
        is h0 or c0. Its cells are a range, not a tuple: a declared size of 10^12 costs nothing."""
        cell_axis = self._axis(cell_axis, len(v.axes), "state cell axis")
        if v.kind == "state":
            if self._lab(v.axes[cell_axis]) != "S":
                raise _Refuse("indexing a state along an axis other than its cells")
            return v
        if self._is_input2(v):
            if cell_axis != 0 or v.axes[0] != "x0" or v.axes[-1] != "F":
                raise _Refuse("a 2-D state input whose cells are not its first axis")
            n = self.input_dims[v.source][0]
            return Data("state", ("S",) + v.axes[1:-1] + ("P",), cells=range(n or _ALL), source=v.source)
        if v.axes != ("x0", "x1", "F"):
            raise _Refuse("a state input that was transposed before use")
        if cell_axis == 2:
            raise _Refuse("state cells on the last axis")
        axes = ("S", "B", "P") if cell_axis == 0 else ("B", "S", "P")
        n = (self.input_dims.get(v.source) or [None] * 3)[cell_axis]
        return Data("state", axes, cells=range(n or _ALL), source=v.source)

    def _op_Slice(self, node, ins, at):
        v = ins[0]
        if self.opset < 10:
            starts, ends, axes, steps = at.get("starts"), at.get("ends"), at.get("axes"), None
            if starts is None or ends is None:
                raise _Refuse("Slice without starts or ends")
        else:
            starts, ends = self._int_list(ins[1], "Slice starts"), self._int_list(ins[2], "Slice ends")
            axes = self._int_list(ins[3], "Slice axes") if len(ins) > 3 and ins[3] is not None else None
            steps = self._int_list(ins[4], "Slice steps") if len(ins) > 4 and ins[4] is not None else None
        axes = axes or list(range(len(starts)))
        steps = steps or [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
            raise _Refuse(f"Slice with {len(starts)} starts, {len(ends)} ends, {len(axes)} axes and steps "
                          f"{steps}: not one each per axis, or a step of 0")
        if isinstance(v, ShapeVec):
            if axes != [0]:
                raise _Refuse("Slice of a shape along a second axis")
            return ShapeVec(v.dims[slice(starts[0], ends[0], steps[0])])
        if self._stateish(v) and len(axes) == 1:
            d = self._as_state(v, axes[0])
            return replace(d, cells=d.cells[slice(starts[0], min(ends[0], _ALL), steps[0])])
        raise _Refuse("Slice of run-time data other than state cells")

    def _op_Split(self, node, ins, at):
        v = ins[0]
        axis = at.get("axis", 0)
        if not self._stateish(v):
            raise _Refuse("Split of run-time data other than state cells")
        d = self._as_state(v, axis)
        split = at.get("split") if self.opset < 13 else (self._int_list(ins[1], "Split sizes") if len(ins) > 1 and ins[1] is not None else None)
        n = len(node.output)
        if split is None:
            if len(d.cells) == _ALL:
                raise _Refuse("equal Split of a state of unknown size")
            split = [len(d.cells) // n] * n
        if len(split) != n or min(split) < 0:
            raise _Refuse(f"Split sizes {split[:_MAX_RANK]} for {n} outputs")
        outs, k = [], 0
        for s in split:
            outs.append(replace(d, cells=d.cells[k:k + s]))
            k += s
        return outs

    def _op_Concat(self, node, ins, at):
        axis = at.get("axis")
        if axis is None:
            raise _Refuse("Concat without axis")
        if all(isinstance(v, (ShapeVec, Const)) for v in ins):
            dims = []
            for v in ins:
                dims.extend(v.dims if isinstance(v, ShapeVec) else self._int_list(v, "Concat"))
            return ShapeVec(tuple(dims))
        if all(isinstance(v, Data) and v.kind == "state" for v in ins):
            first = ins[0]
            if any(self._axes(v) != self._axes(first) or v.which != first.which for v in ins) or \
                    self._lab(first.axes[self._axis(axis, len(first.axes), "Concat axis")]) != "S":
                raise _Refuse("Concat of states that are not runs of cells")
            if sum(len(v.cells) for v in ins) > self._max_cells:
                raise _Refuse(f"Concat of more state cells than the graph's {self._max_cells} LSTM cells")
            return replace(first, cells=tuple(c for v in ins for c in v.cells), source="")
        raise _Refuse("Concat of run-time data other than states")

    def _arith(self, node, ins, fn):
        a, b = ins
        if isinstance(a, (ShapeVec, Const)) and isinstance(b, (ShapeVec, Const)):
            av = a.dims if isinstance(a, ShapeVec) else np.asarray(a.value).reshape(-1).tolist()
            bv = b.dims if isinstance(b, ShapeVec) else np.asarray(b.value).reshape(-1).tolist()
            if any(isinstance(x, str) for x in list(av) + list(bv)):
                raise _Refuse(f"{node.op_type} of symbolic sizes")
            return ShapeVec(tuple(int(x) for x in np.atleast_1d(fn(np.asarray(av), np.asarray(bv)))))
        raise _Refuse(f"{node.op_type} on run-time data")

    def _op_Mul(self, node, ins, at):
        return self._arith(node, ins, np.multiply)

    def _op_Div(self, node, ins, at):
        return self._arith(node, ins, np.floor_divide)

    def _op_Sub(self, node, ins, at):
        return self._arith(node, ins, np.subtract)

    def _op_Expand(self, node, ins, at):
        if isinstance(ins[0], Const) and not np.any(ins[0].value):
            return ZeroState()
        raise _Refuse("Expand of run-time data")

    _op_Tile = _op_Expand

    def _op_ConstantOfShape(self, node, ins, at):
        value = at.get("value")
        if value is not None and np.any(tensor(value)):
            raise _Refuse("ConstantOfShape with a non-zero value on the data path")
        return ZeroState()
