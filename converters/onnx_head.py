"""ONNX importer, the head: MatMul/Gemm + Add + activation on the top LSTM's output."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .onnx_common import _Refuse
from .onnx_values import Const, Data, ShapeVec


class HeadOps:
    """Handlers of _Importer (onnx_import.py), which gives the label helpers they call."""

    def _head_input(self, v: Data, op):
        if not isinstance(v, Data) or v.kind != "frames":
            raise _Refuse(f"{op} on something other than the top layer's output")
        if v.stage != len(self.layers) or not self.layers or self._lab(v.axes[-1]) not in ("F", "O"):
            raise _Refuse(f"{op} not on the top LSTM's output features")

    def _op_MatMul(self, node, ins, at):
        v, w = ins
        if not isinstance(w, Const):
            raise _Refuse("MatMul with a run-time right operand")
        self._head_input(v, "MatMul")
        if v.head or self.head_w is not None:
            raise _Refuse("a second dense layer after the LSTMs")
        wv = np.asarray(w.value)
        if wv.ndim != 2 or wv.shape[0] != self.layers[-1].output_size:
            raise _Refuse(f"MatMul weight of shape {wv.shape} does not fit the LSTM output")
        self.head_w = wv.T
        return replace(v, axes=v.axes[:-1] + ("O",), head=("mm",))

    def _op_Gemm(self, node, ins, at):
        """alpha * v @ op(w) + beta * c: the head's MatMul and Add with alpha and beta
        folded into the weights (transA would transpose the frames, no head does that)."""
        v, w = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if not isinstance(w, Const) or (c is not None and not isinstance(c, Const)):
            raise _Refuse("Gemm with run-time weights")
        if at.get("transA", 0):
            raise _Refuse("Gemm with transA")
        wv = np.asarray(w.value)
        wv = wv.T if at.get("transB", 0) else wv
        out = self._op_MatMul(node, [v, Const(wv * np.float32(at.get("alpha", 1.0)))], at)
        if c is not None:
            out = self._op_Add(node, [out, Const(np.asarray(c.value) * np.float32(at.get("beta", 1.0)))], at)
        return out

    def _op_Add(self, node, ins, at):
        a, b = ins
        if isinstance(a, Const):
            a, b = b, a
        if isinstance(a, (ShapeVec, Const)):
            return self._arith(node, ins, np.add)
        if not (isinstance(a, Data) and a.head == ("mm",) and isinstance(b, Const)):
            raise _Refuse("Add other than the dense head's bias")
        bv = np.asarray(b.value)
        O = self.head_w.shape[0]
        if bv.size != O or (bv.ndim and bv.shape[-1] != O):
            raise _Refuse(f"head bias of shape {bv.shape} does not fit {O} outputs")
        self.head_b = bv.reshape(O)
        return replace(a, head=("mm", "bias"))

    def _head_act(self, node, ins, at, name):
        v = ins[0]
        if not (isinstance(v, Data) and v.head and "act" not in v.head):
            raise _Refuse(f"{name} other than after the dense head")
        if name in ("Softmax", "LogSoftmax"):
            axis = at.get("axis", -1 if self.opset >= 13 else 1)
            if self._axis(axis, len(v.axes), f"{name} axis") != len(v.axes) - 1:
                raise _Refuse(f"{name} over an axis other than the last")
        self.head_act = name
        return replace(v, head=v.head + ("act",))

    def _op_Softmax(self, node, ins, at):
        return self._head_act(node, ins, at, "Softmax")

    def _op_LogSoftmax(self, node, ins, at):
        return self._head_act(node, ins, at, "LogSoftmax")

    def _op_Sigmoid(self, node, ins, at):
        return self._head_act(node, ins, at, "Sigmoid")

    def _op_Tanh(self, node, ins, at):
        return self._head_act(node, ins, at, "Tanh")

    def _op_Relu(self, node, ins, at):
        return self._head_act(node, ins, at, "Relu")
