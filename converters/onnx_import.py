"""ONNX graph -> `Model`, by abstract interpretation of the graph.

Every tensor gets an abstract value:
  Const        weights and everything computed from constants alone (folded here);
  Data         a run-time tensor whose axes carry labels: T (time), B (batch), F (the
               features of a stage: stage 0 is the model input, stage l+1 the output of
               layer l), D/P (an LSTM's directions and h), S (a run of state cells),
               O (head outputs), 1 (a unit axis);
  ShapeVec     Shape() of Data, with symbolic T/B, for exporters' shape arithmetic;
  Unknown      what an op outside the supported set produced.
The glue exporters wrap LSTMs in (Transpose, Slice, Squeeze, Unsqueeze, Reshape,
Concat, Split, Gather of state, Identity, Cast, Dropout, Shape arithmetic) only moves
labels around; LSTM, Gather(table, ids), MatMul/Gemm + Add + Softmax/... build the
Model. Any Unknown reaching an LSTM or a graph output makes the import fail with the
list of unsupported ops; select="lstm" keeps only the LSTM stack instead.

This module holds the interpreter (dispatch, folding, labels, the result); the op
handlers live beside it: onnx_glue.py (glue), onnx_lstm.py (the LSTM node) and
onnx_head.py (the head), with what they share in onnx_common.py.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from lstm_engine.errors import ModelError
from lstm_engine.model import Head, Model

from .budget import Budget
from .onnx_common import _BIG_B, _BIG_T, _MAX_RANK, _Downstream, _is_run, _Refuse
from .onnx_files import load_proto, tensor
from .onnx_glue import GlueOps
from .onnx_graphio import GraphIO
from .onnx_head import HeadOps
from .onnx_lstm import LstmNode
from .onnx_values import AnyShape, Const, Data, Unknown, ZeroState

_GLUE = {"Identity", "Dropout", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Slice",
         "Gather", "Split", "Concat", "Expand", "Tile"}
_A = onnx.AttributeProto
_CONSTANT_ATTRS = frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"})
_HEAD_ACTS = {"Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Relu"}
_SHAPE_ONLY = 1 << 12  # fold inputs this large reach shape inference as shapes, not values
# Ops the importer folds when all their inputs are constant: their work grows with their
# inputs and output, which the budget bounds (MatMul/Gemm with both: at most held x 2^13
# multiply-adds). ONNX's reference evaluator runs others, such as Conv, in Python loops
# whose time a small file could make quadratic, for no weight an LSTM needs.
_FOLDABLE = frozenset({
    "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat",
    "Split", "Slice", "Gather", "GatherElements", "Expand", "Tile", "Pad",
    "Shape", "Size", "ConstantOfShape", "Range",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Sqrt", "Reciprocal", "Pow", "Exp", "Log", "Max", "Min",
    "Clip", "Sign", "Floor", "Ceil", "Round", "Relu", "Sigmoid", "Tanh",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "MatMul", "Gemm", "DequantizeLinear"})


def _output_elements(m: onnx.ModelProto) -> int:
    """Elements the graph outputs of m (one node, constant inputs) will hold, by ONNX shape
    inference before anything is computed. Without data propagation, which would itself
    spend about a hundred bytes per element of the values it follows; the inputs are
    initializers or typed inputs, so shapes alone tell the sizes."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph
    except Exception as e:  # onnx raises its own InferenceError and friends
        raise _Refuse(f"cannot tell how large folding it would be ({str(e)[:200]})") from None
    total = 0
    for v in inferred.output:
        tt = v.type.tensor_type
        if tt.elem_type == onnx.TensorProto.STRING:
            raise _Refuse("folds strings, which no weight is made of")
        if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
            raise _Refuse("cannot tell how large folding it would be (its output size depends on values)")
        total += int(np.prod([d.dim_value for d in tt.shape.dim], dtype=object))
    return total


# ---- the interpreter ----------------------------------------------------------------
class _Importer(GlueOps, LstmNode, HeadOps):
    def __init__(self, proto: onnx.ModelProto, constants, select):
        self.g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.select = select
        self.vals: dict = {}
        self.io = GraphIO()
        self.layers: list = []  # Layer per LSTM node in stack order
        self.embedding = None
        self.head_w = self.head_b = None
        self.head_act = None
        self.bind: dict = {}  # x-axis labels of the graph input -> "T"/"B"
        self.problems: list = []  # (op_type, node name) on the data path
        self.state_mode = None  # True when LSTMs take initial state from graph inputs
        self._run_start = {}  # state input -> its first cell used
        self._y_layout = None  # 0 / 1: the order of T and B in the graph's output
        self.input_dims = {}  # graph input -> static dims (None where symbolic)
        self.budget = Budget()  # what folding constants may create (DESIGN §7)
        self._max_cells = 2 * sum(n.op_type == "LSTM" for n in self.g.node)  # of any state run
        self._weights_used = set()  # ids of constants that became LSTM weights
        constants = dict(constants or {})
        for t in self.g.initializer:
            self.vals[t.name] = self._held(tensor(t))
        for vi in self.g.input:
            if vi.name in constants:
                self.vals[vi.name] = self._held(np.asarray(constants.pop(vi.name)))
            elif vi.name not in self.vals:
                self.vals[vi.name] = self._graph_input(vi)
        if constants:
            raise ModelError(f"constants: {sorted(constants)} are not graph inputs "
                             f"(inputs: {[i.name for i in self.g.input]})")

    def _held(self, value: np.ndarray) -> Const:
        """A constant the file (or the caller) gives: it adds to what folding may create."""
        self.budget.hold(value.size)
        return Const(value)

    # graph inputs: labels are provisional until an LSTM says which axis is time
    def _graph_input(self, vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        self.input_dims[vi.name] = dims
        elem = tt.elem_type
        is_int = elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        rank = len(dims)
        if is_int and rank in (1, 2):  # token ids, or (rank 1) sequence_lens: decided by use
            return Data("ids", tuple(f"x{k}" for k in range(rank)), source=vi.name)
        if rank == 3:
            # a float 3-D input: frames (x0, x1, F), or a state (S, B, P) -- decided by use
            return Data("raw3", ("x0", "x1", "F"), source=vi.name)
        if rank == 2:
            return Data("frames", ("x0", "F"), stage=0, source=vi.name)
        return Unknown(f"graph input {vi.name!r} of rank {rank}")

    def run(self):
        needed = self._needed()
        for node in self.g.node:
            if not any(o in needed for o in node.output):
                continue
            ins = [self.vals.get(n, Unknown("missing")) if n else None for n in node.input]
            try:
                outs = self._node(node, ins)
            except _Refuse as e:
                if node.op_type == "LSTM" and (self.select or not isinstance(e, _Downstream)):
                    # never drop a layer of the stack (without select, _finish names the cause)
                    raise ModelError(f"LSTM node {node.name!r}: its input cannot be followed back to the "
                                     f"model input or the LSTM before it ({e})") from None
                if not isinstance(e, _Downstream):
                    self.problems.append((node.op_type, node.name, str(e)))
                elif not self._handles(node.op_type):  # refused anyway: name it too
                    self.problems.append((node.op_type, node.name, f"{node.op_type} on run-time data is not supported"))
                outs = [Unknown(str(e))] * len(node.output)
            for name, v in zip(node.output, outs):
                if name:
                    self.vals[name] = v
        return self._finish()

    def _handles(self, op) -> bool:
        """op can take run-time data (a handler, or a shortcut of _node for zero states)."""
        return hasattr(self, "_op_" + op) or op in ("Constant", "Shape")

    def _needed(self) -> set:
        producers = {o: n for n in self.g.node for o in n.output}
        need, todo = set(), [o.name for o in self.g.output]
        while todo:
            t = todo.pop()
            if t in need:
                continue
            need.add(t)
            n = producers.get(t)
            if n is not None:
                todo.extend(i for i in n.input if i)
                for a in n.attribute:  # If/Loop/Scan bodies read outer names
                    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        raise ModelError(f"node {n.name or n.op_type!r}: control flow ({n.op_type}) "
                                         "is not supported")
        return need

    # ---- dispatch -------------------------------------------------------------
    def _node(self, node, ins):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise _Refuse(f"custom domain {node.domain!r}")
        self._check_arity(node)
        if op == "LSTM" and self.select and not self.layers and isinstance(ins[0], Unknown):
            # select="lstm": whatever feeds the first LSTM becomes the model input
            ins = [Data("frames", ("x0", "x1", "F"), stage=0, source=node.input[0])] + ins[1:]
        present = [v for v in ins if v is not None]
        if op in ("Expand", "Tile") and isinstance(ins[0], Const) and not np.any(ins[0].value):
            return [ZeroState()]
        if op == "Shape" and isinstance(ins[0], Unknown) or \
                op in _GLUE | {"Mul", "Add", "Sub", "Div", "ConstantOfShape"} and any(isinstance(v, AnyShape) for v in present):
            return [ZeroState() if op == "ConstantOfShape" else AnyShape()] * len(node.output)
        if op in _GLUE and isinstance(ins[0], ZeroState):
            return [ZeroState()] * len(node.output)
        if any(isinstance(v, Unknown) for v in present):
            raise _Downstream("input comes from an unsupported op")
        if op == "Constant":
            return [self._held(self._constant(node))]
        if op.startswith("Random") or op in ("Bernoulli", "Multinomial"):
            raise _Refuse(f"{op} is not deterministic")
        if all(isinstance(v, Const) for v in present) and op != "LSTM":
            return self._fold(node, ins)
        handler = getattr(self, "_op_" + op, None)
        if handler is None:
            raise _Refuse(f"{op} on run-time data is not supported")
        out = handler(node, ins, self._attrs(node))
        return out if isinstance(out, list) else [out]

    def _schema(self, node):
        try:
            return onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            raise _Refuse(f"{node.op_type} is not an op of ONNX opset {self.opset}") from None

    def _check_arity(self, node):
        """As many inputs and outputs as the op's schema allows: every op handler, and the
        shortcuts before them, index inputs and outputs by position."""
        sc = self._schema(node)
        if not (sc.min_input <= len(node.input) <= sc.max_input and
                sc.min_output <= len(node.output) <= sc.max_output):
            raise ModelError(f"{node.op_type} node {node.name!r}: {len(node.input)} input(s) and "
                             f"{len(node.output)} output(s); ONNX {node.op_type} (opset {self.opset}) takes "
                             f"{sc.min_input} to {sc.max_input} and gives {sc.min_output} to {sc.max_output}")

    def _attrs(self, node):
        """The attributes of a node the importer interprets, by name, each one of those the
        op's ONNX schema defines and of the type it gives (a file may put any type under
        any name, and every value is checked where it is used)."""
        schema = self._schema(node)
        unknown = sorted({a.name for a in node.attribute} - set(schema.attributes))
        if unknown:
            raise ModelError(f"{node.op_type} node {node.name!r}: unsupported attribute(s) {unknown[:10]}")
        for a in node.attribute:
            if a.type != schema.attributes[a.name].type:
                raise ModelError(f"{node.op_type} node {node.name!r}: attribute {a.name!r} is of type "
                                 f"{_A.AttributeType.Name(a.type)}; ONNX defines it as "
                                 f"{schema.attributes[a.name].type.name}")
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _constant(self, node) -> np.ndarray:
        """The value of a Constant node: one tensor or number(s); strings and sparse tensors
        are no weights."""
        at = self._attrs(node)
        if len(at) != 1 or not at.keys() <= _CONSTANT_ATTRS:
            raise _Refuse(f"Constant with attributes {sorted(at)}; supported: one of {sorted(_CONSTANT_ATTRS)}")
        (name, value), = at.items()
        return tensor(value) if name == "value" else np.array(value, np.float32 if "float" in name else np.int64)

    def _fold(self, node, ins):
        """Outputs of a node whose inputs are all constant, computed by ONNX's reference
        evaluator once their size is known to fit the import's budget."""
        from onnx.reference import ReferenceEvaluator

        if node.op_type not in _FOLDABLE:
            raise _Refuse(f"{node.op_type} of constants is not folded (only data movement, shape "
                          "arithmetic, elementwise math, reductions and MatMul/Gemm are)")
        m, feeds = self._fold_model(node, ins)
        self.budget.spend(_output_elements(m), f"folding constant {node.op_type}" + (f" {node.name!r}" if node.name else ""))
        try:
            res = ReferenceEvaluator(m).run(None, feeds)
        except Exception as e:
            raise _Refuse(f"cannot fold constant {node.op_type}: {e}") from None
        return [Const(np.asarray(r)) for r in res]

    def _fold_model(self, node, ins):
        """A one-node model computing `node` from the constants `ins`, and the feeds it needs.
        Each distinct input appears once however often the node names it, and small inputs
        become its constants, so that shape inference sees the sizes that shape vectors,
        repeats or ranges ask for; large ones stay inputs."""
        h = onnx.helper
        local = {}  # graph name -> fold name
        for name, v in zip(node.input, ins):
            if v is not None:
                if v.value.dtype.kind in "OUS":
                    raise _Refuse("folds strings, which no weight is made of")
                local.setdefault(name, (f"i{len(local)}", v.value))
        n2 = h.make_node(node.op_type, [local[n][0] if v is not None else "" for n, v in zip(node.input, ins)],
                         [f"o{k}" for k in range(len(node.output))], domain=node.domain)
        n2.attribute.extend(node.attribute)
        big = {k: v for k, v in local.values() if v.size > _SHAPE_ONLY}
        try:
            g = h.make_graph([n2], "fold",
                             [h.make_tensor_value_info(k, h.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                              for k, v in big.items()],
                             [h.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in n2.output],
                             [numpy_helper.from_array(v, k) for k, v in local.values() if k not in big])
            return h.make_model(g, opset_imports=[h.make_opsetid("", self.opset)]), big
        except Exception as e:
            raise _Refuse(f"cannot fold constant {node.op_type}: {e}") from None

    # ---- label helpers --------------------------------------------------------
    def _lab(self, a):
        return self.bind.get(a, a)

    def _axes(self, d: Data):
        return tuple(self._lab(a) for a in d.axes)

    def _placeholder(self, label):
        """Size of a time or batch axis: the model input's static size where the graph
        fixes one (exporters bake it into Reshape targets), else a stand-in."""
        lab = self._lab(label)
        raw = label if label in ("x0", "x1") else next((r for r, b in self.bind.items() if b == lab), None)
        dims = self.input_dims.get(self.io.x) or []
        if raw is not None and int(raw[1]) < len(dims) and dims[int(raw[1])]:
            return dims[int(raw[1])]
        if lab == "B" and not self.io.batched:  # the LSTM's batch axis made by Unsqueeze
            return 1
        return _BIG_T if lab in ("T", "x0") else _BIG_B

    def _size(self, d: Data, label):
        label = self._lab(label)
        if label in ("T", "B", "x0", "x1"):
            return self._placeholder(label)
        if label == "1":
            return 1
        if label == "S":
            return len(d.cells)
        if d.kind == "lstm_y":
            layer = self.layers[d.stage - 1]
            return {"D": layer.num_directions, "P": layer.proj_size}[label]
        if d.kind == "state":
            layer = self._cell_layer(d.cells[0])
            return {"P": layer.proj_size if d.which == "h" else layer.hidden_size}[label]
        if label == "F":
            if d.stage is None or (d.stage == 0 and self.embedding is None):  # a graph input, as declared
                dims = self.input_dims.get(d.source) or []
                if dims and dims[-1]:
                    return dims[-1]
                if d.stage is None:
                    raise _Refuse(f"the last dim of graph input {d.source!r} is not a fixed size")
            return self._stage_width(d.stage)
        if label == "O":
            return self.head_w.shape[0]  # head_w is (O, K)
        raise _Refuse(f"axis {label} has no known size")

    def _stage_width(self, stage):
        if stage == 0:
            if self.embedding is not None:
                return self.embedding.weight.shape[1]
            raise _Refuse("input width is not known before the first LSTM")
        return self.layers[stage - 1].output_size

    def _cell_layer(self, cell):
        k = 0
        for layer in self.layers:
            if cell < k + layer.num_directions:
                return layer
            k += layer.num_directions
        raise _Refuse("state cell beyond the LSTMs seen so far")

    @staticmethod
    def _norm(d: Data) -> Data:
        """lstm_y whose D axis is gone (one direction) is a stage's frames."""
        if d.kind == "lstm_y" and "D" not in d.axes and "P" in d.axes:
            return replace(d, kind="frames", axes=tuple("F" if a == "P" else a for a in d.axes))
        return d

    @staticmethod
    def _int_list(v, what):
        """A constant list of shape dims, axes or slice bounds: integers, at most _MAX_RANK."""
        if not isinstance(v, Const):
            raise _Refuse(f"{what} must be constant")
        arr = np.asarray(v.value)
        if arr.dtype.kind not in "iu" or arr.size > _MAX_RANK:
            raise _Refuse(f"{what} must be at most {_MAX_RANK} integers, got {arr.size} of {arr.dtype}")
        return [int(x) for x in arr.reshape(-1)]

    @staticmethod
    def _axis(a, rank, what) -> int:
        """An axis (attribute or constant) as an index into `rank` axes; ONNX allows -rank..rank-1."""
        if not -rank <= a < rank:
            raise _Refuse(f"{what} {a} is out of range for {rank} axes")
        return a % rank

    @classmethod
    def _axes_set(cls, axes, rank, what) -> list:
        """Distinct axes, sorted, each in range."""
        out = sorted({cls._axis(a, rank, what) for a in axes})
        if len(out) != len(axes):
            raise _Refuse(f"{what} list {axes} repeats an axis")
        return out

    # ---- the result -----------------------------------------------------------------
    def _finish(self):
        if not self.layers and not self.problems:
            raise ModelError("no LSTM node found on the way to the graph's outputs")
        bad_outputs = []
        for o in self.g.output:
            v = self.vals.get(o.name)
            if isinstance(v, Data) and v.kind in ("frames", "lstm_y") and v.stage == len(self.layers) and \
                    (v.head == () or self.head_w is not None):
                if self.head_w is not None and not v.head:
                    bad_outputs.append((o.name, "the LSTM output without the head beside the head's output"))
                    continue
                axes = self._axes(v)
                order = [a for a in axes if a in ("T", "B")]
                self.io.y = o.name
                self.io.y_axes = axes
                # a batch of 1 squeezed or merged away leaves no order to check
                self._y_layout = None if "B" not in order else 1 if order[0] == "B" else 0
            elif isinstance(v, Data) and v.kind == "state" and v.which and _is_run(v.cells) and \
                    self._axes(v) in ((("S", "B", "P"), ("B", "S", "P")) if self.io.batched else (("S", "P"),)):
                getattr(self.io, v.which + "n").append((o.name, v.cells[0], len(v.cells)))
                self.io.state_axes = self._axes(v)
            elif self.select:
                self.io.extras.append(o.name)
            else:
                why = v.why if isinstance(v, Unknown) else "not the model output or the full final state"
                bad_outputs.append((o.name, why))
        if self.problems and not self.select:
            counts = Counter(p[0] for p in self.problems)
            ops = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})" for op, n in sorted(counts.items()))
            detail = "; ".join(f"{op} {name!r}: {why}" for op, name, why in self.problems[:6])
            raise ModelError(f"unsupported ops on the way to the outputs: {ops} ({detail}); "
                             "to run only the recurrent part in the engine use from_onnx(src, select='lstm')")
        if not self.layers:
            raise ModelError("no LSTM node found on the way to the graph's outputs")
        if bad_outputs and not self.select:
            raise ModelError("graph outputs that do not map onto the engine: " +
                             "; ".join(f"{n!r} ({w})" for n, w in bad_outputs))
        if not (self.io.y or self.io.hn or self.io.cn) and not self.select:
            raise ModelError("no graph output carries the top LSTM's output or the final state")
        x_layout = 1 if self.bind.get("x0") == "B" or self.bind.get("x1") == "T" else 0
        if self.io.y and not self.select and self._y_layout not in (None, x_layout) and self.io.batched:
            raise ModelError("the graph's output has its time and batch axes in the other order than its input")
        self.io.layout = x_layout
        self.io.h0 = [tuple(r) for r in self.io.h0]
        self.io.c0 = [tuple(r) for r in self.io.c0]
        if self.select:
            model = Model(self.layers, None, None, x_layout)
            return model, self.io
        head = None
        if self.head_w is not None:
            head = Head(self.head_w, self.head_b, self.head_act)
        return Model(self.layers, self.embedding, head, x_layout), self.io


def import_onnx(src, constants=None, select=None) -> tuple[Model, GraphIO]:
    """The Model and the graph-interface mapping (see GraphIO)."""
    if select not in (None, "lstm"):
        raise ValueError(f"select={select!r}: the only option is 'lstm'")
    return import_proto(load_proto(src), constants, select)


def import_proto(proto, constants=None, select=None) -> tuple[Model, GraphIO]:
    """import_onnx on a model from onnx_files.load_proto (self-contained: no external data)."""
    try:
        return _Importer(proto, constants, select).run()
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        if isinstance(e, ModelError):
            raise
        # a well-formed protobuf whose graph breaks the ONNX rules (wrong attribute types, ...)
        raise ModelError(f"malformed ONNX graph ({type(e).__name__}: {e})") from None


def from_onnx(src, constants=None, select=None) -> Model:
    """An ONNX model (path, bytes or ModelProto) as an lstm_engine.Model.

    constants: arrays for graph inputs that hold weights (e.g. ONNX's backend tests).
    select="lstm": keep only the LSTM stack when the graph holds more than the engine runs.
    """
    model, io = import_onnx(src, constants, select)
    if io.fixed_lengths:  # a Model has no lengths of its own: they would be dropped unnoticed
        warnings.warn(f"the graph's constant sequence_lens {list(io.fixed_lengths[:8])}"
                      f"{' ...' if len(io.fixed_lengths) > 8 else ''} are not part of the Model: pass them "
                      "as Engine.run(X, lengths=...), or use import_onnx, whose GraphIO.engine_args does",
                      stacklevel=2)
    return model
