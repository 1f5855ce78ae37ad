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
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from lstm_engine import activations as acts
from lstm_engine.errors import ModelError
from lstm_engine.model import Direction, Embedding, Head, Layer, Model

from .budget import Budget
from .onnx_files import load_proto, tensor
from .onnx_graphio import GraphIO
from .onnx_values import AnyShape, Const, Data, ShapeVec, Unknown, ZeroState

_BIG_T, _BIG_B = 100003, 100019  # stand-ins for symbolic T and B in reshape arithmetic
_ALL = 1 << 20  # cell count of a state input whose size the graph does not fix
_MAX_RANK = 64  # numpy's: no shape, perm or axes list is longer
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


class _Refuse(Exception):
    pass


class _Downstream(_Refuse):
    """Refused only because an input was refused: not a cause worth reporting."""


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


def _prod(dims) -> int:
    """Product of Python ints, exact (numpy's int64 would wrap around)."""
    return int(np.prod(dims, dtype=object))


def _text(v) -> str:
    """A string attribute (bytes in the protobuf) as text; bytes that are not UTF-8 still
    give a name to refuse."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _is_run(cells) -> bool:
    """cells are consecutive and not empty; a range is checked without listing its members."""
    if not len(cells):
        return False
    run = range(cells[0], cells[0] + len(cells))
    return cells == run if isinstance(cells, range) else tuple(cells) == tuple(run)


# ---- the interpreter ----------------------------------------------------------------
class _Importer:
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

    # ---- glue ops ---------------------------------------------------------------
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
        if isinstance(data, Data) and data.kind in ("state", "raw3") and isinstance(idx, Const):
            d = self._as_state(data, axis)
            k = np.asarray(idx.value)
            if k.dtype.kind not in "iu" or k.ndim > 1:
                raise _Refuse(f"Gather of state cells by indices of shape {k.shape} and type {k.dtype}")
            cells = self._pick(d.cells, [int(i) for i in k.reshape(-1)], "Gather index")
            axis = self._axis(axis, len(d.axes), "Gather axis")
            axes = d.axes if k.ndim else tuple(a for j, a in enumerate(d.axes) if j != axis)
            return replace(d, cells=cells, axes=axes)
        raise _Refuse("Gather on run-time data other than an embedding or a state cell")

    def _as_state(self, v: Data, cell_axis):
        """A raw 3-D graph input used as (S, B, P) state: it is h0 or c0. Its cells are a
        range, not a tuple: a declared size of 10^12 costs nothing."""
        cell_axis = self._axis(cell_axis, len(v.axes), "state cell axis")
        if v.kind == "state":
            if self._lab(v.axes[cell_axis]) != "S":
                raise _Refuse("indexing a state along an axis other than its cells")
            return v
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
        if isinstance(v, Data) and v.kind in ("state", "raw3") and len(axes) == 1:
            d = self._as_state(v, axes[0])
            return replace(d, cells=d.cells[slice(starts[0], min(ends[0], _ALL), steps[0])])
        raise _Refuse("Slice of run-time data other than state cells")

    def _op_Split(self, node, ins, at):
        v = ins[0]
        axis = at.get("axis", 0)
        if not (isinstance(v, Data) and v.kind in ("state", "raw3")):
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

    # ---- model-building ops -------------------------------------------------------
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
            elif lab == "1" and w == "B":
                self.io.batched = False
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
        elif isinstance(v, Data) and v.kind in ("state", "raw3"):
            d = self._as_state(v, 0 if layout == 0 else 1)
            local = d.cells if len(d.cells) != _ALL else range(len(cells))  # whole input
            want = ("S", "B", "P") if layout == 0 else ("B", "S", "P")
            self.io.state_axes = want
            axes = tuple("S" if self._lab(a) == "1" and len(local) == 1 else self._lab(a) for a in d.axes)
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
                    self._axes(v) in (("S", "B", "P"), ("B", "S", "P")):
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
    return import_onnx(src, constants, select)[0]
