"""Random models covering DESIGN §2, and onnxruntime as the oracle for them."""
import numpy as np

import lstm_engine as le
from lstm_engine import activations as acts

TOL = 1e-4  # DESIGN §6: fp32 agreement with onnxruntime


def rand(rng, *shape, scale=1.0):
    return (rng.uniform(-1, 1, shape) * scale).astype(np.float32)


def make_direction(rng, I, H, P=None, peep=False, activations=acts.DEFAULT, scale=1.0):
    P = H if P is None else P
    s = scale / np.sqrt(I + P)
    return le.Direction(
        W=rand(rng, 4 * H, I, scale=s), R=rand(rng, 4 * H, P, scale=s), b=rand(rng, 4 * H, scale=0.5),
        peepholes=rand(rng, 3 * H, scale=0.5) if peep else None,
        proj=rand(rng, P, H, scale=1 / np.sqrt(H)) if P != H else None,
        activations=activations)


def make_model(rng, I, hidden=(8,), direction="forward", proj=None, peep=False, clip=None,
               input_forget=False, activations=acts.DEFAULT, vocab=None, head=None,
               head_act=None, layout=0, scale=1.0):
    """hidden: sizes per layer; direction, proj, ...: one value for every layer, or a
    list with one value per layer (activations: a (f, g, h) tuple, or a list of them)."""
    def per(v, i):
        return v[i] if isinstance(v, list) else v

    emb = None
    if vocab is not None:
        emb = le.Embedding(rand(rng, vocab, I))
    layers, cur = [], I
    for i, H in enumerate(hidden):
        d = per(direction, i)
        nd = 2 if d == "bidirectional" else 1
        P = per(proj, i)
        dirs = [make_direction(rng, cur, H, P, per(peep, i), per(activations, i), scale) for _ in range(nd)]
        layers.append(le.Layer(dirs, d, per(clip, i), per(input_forget, i)))
        cur = nd * (P or H)
    hd = None
    if head is not None:
        hd = le.Head(rand(rng, head, cur, scale=1 / np.sqrt(cur)), rand(rng, head, scale=0.5), head_act)
    return le.Model(layers, emb, hd, layout)


def ort_run(model, X, h0=None, c0=None, lengths=None):
    """onnxruntime on converters.to_onnx(model). X batched in the model's layout;
    h0/c0: state lists of (B, P)/(B, H) per cell. Returns Y and (h, c) lists."""
    import onnxruntime as ort

    from converters import to_onnx

    with_state = h0 is not None
    proto = to_onnx(model, with_state=with_state, with_lengths=lengths is not None)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"X": X}
    if lengths is not None:
        feed["sequence_lens"] = np.asarray(lengths, np.int32)
    k = 0
    for li, layer in enumerate(model.layers):
        D = layer.num_directions
        if with_state:
            feed[f"h0_{li}"] = np.stack(h0[k:k + D]).astype(np.float32)
            feed[f"c0_{li}"] = np.stack(c0[k:k + D]).astype(np.float32)
        k += D
    res = sess.run(None, feed)
    if not with_state:
        return res[0], None
    h, c = [], []
    for li in range(len(model.layers)):
        h.extend(list(res[1 + 2 * li]))
        c.extend(list(res[2 + 2 * li]))
    return res[0], (h, c)


def maxdiff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def scaled_err(a, b):
    """max |a - b| / max(1, |b|): float32 keeps ~1e-7 relative precision, so a state that
    grows large (unbounded activations, f = 1 - i with a signed gate) is judged relatively."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max()) if a.size else 0.0
