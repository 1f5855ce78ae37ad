"""A plain NumPy forward pass that reads like the ONNX LSTM equations.

It is the oracle the kernels are tested against: no packing, no blocking, any float
dtype (float64 by default). Speed is not a goal here.

    i = f(W_i x + R_i h + b_i + P_i * c)        clip applied to every pre-activation
    f = f(W_f x + R_f h + b_f + P_f * c)        (or 1 - i with input_forget)
    g = g(W_c x + R_c h + b_c)
    c' = f * c + i * g
    o = f(W_o x + R_o h + b_o + P_o * c')
    h' = o * h(c')                              then h' = proj . h' when projected
"""
import numpy as np

from . import activations as acts


def cell_step(layer, d, x, h, c, dtype=np.float64):
    """One step of one direction. x (I,), h (P,), c (H,) -> (h', c')."""
    H = layer.hidden_size
    W, R, b = d.W.astype(dtype), d.R.astype(dtype), d.b.astype(dtype)
    act_f, act_g, act_h = d.activations
    z = W @ x + R @ h + b
    zi, zo, zf, zc = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
    if d.peepholes is not None:
        p = d.peepholes.astype(dtype)
        p_i, p_o, p_f = p[:H], p[H:2 * H], p[2 * H:]
        zi = zi + p_i * c
        zf = zf + p_f * c
    clip = (lambda v: np.clip(v, -layer.clip, layer.clip)) if layer.clip else (lambda v: v)
    i = acts.apply(act_f, clip(zi))
    f = 1 - i if layer.input_forget else acts.apply(act_f, clip(zf))
    g = acts.apply(act_g, clip(zc))
    c_new = f * c + i * g
    if d.peepholes is not None:
        zo = zo + p_o * c_new
    o = acts.apply(act_f, clip(zo))
    h_new = o * acts.apply(act_h, c_new)
    if d.proj is not None:
        h_new = d.proj.astype(dtype) @ h_new
    return h_new, c_new


def head(model, y, dtype=np.float64):
    """The dense head and its activation over the last axis of y."""
    if model.head is None:
        return y
    hd = model.head
    z = y @ hd.weight.astype(dtype).T
    if hd.bias is not None:
        z = z + hd.bias.astype(dtype)
    a = hd.activation
    if a in ("Softmax", "LogSoftmax"):
        z = z - z.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return np.exp(z - lse) if a == "Softmax" else z - lse
    if a is None:
        return z
    return acts.apply(acts.make(a), z)


def run(model, X, h0=None, c0=None, lengths=None, dtype=np.float64):
    """Offline forward pass of the whole model.

    X: (T, B, I) frames, or (T, B) token ids for embedding models; (B, T, ...) when
       model.layout == 1.
    h0, c0: lists (one per cell, state order) of (B, P) / (B, H) arrays, or None for zeros.
    lengths: (B,) valid frames per sequence, or None for all T.
    Returns Y (T, B, O) (or (B, T, O) for layout 1) and the final (h, c) lists.
    """
    X = np.asarray(X)
    if model.layout == 1:
        X = np.swapaxes(X, 0, 1)
    if model.embedding is not None:
        X = model.embedding.weight[X.astype(np.int64)]
    X = X.astype(dtype)
    T, B = X.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    sizes = model.state_sizes
    h = [np.zeros((B, p), dtype) if h0 is None else np.array(h0[k], dtype) for k, (p, _) in enumerate(sizes)]
    c = [np.zeros((B, n), dtype) if c0 is None else np.array(c0[k], dtype) for k, (_, n) in enumerate(sizes)]
    layer_in = X
    k = 0
    for layer in model.layers:
        outs = []
        for di, d in enumerate(layer.directions):
            reverse = layer.direction == "reverse" or di == 1
            Y = np.zeros((T, B, layer.proj_size), dtype)
            for b in range(B):
                n = int(lengths[b])
                if n == 0:  # onnxruntime: an empty sequence ends in zero state
                    h[k][b], c[k][b] = 0, 0
                steps = range(n - 1, -1, -1) if reverse else range(n)
                for t in steps:
                    h[k][b], c[k][b] = cell_step(layer, d, layer_in[t, b], h[k][b], c[k][b], dtype)
                    Y[t, b] = h[k][b]
            outs.append(Y)
            k += 1
        layer_in = np.concatenate(outs, axis=-1)
    Y = head(model, layer_in, dtype)
    if model.layout == 1:
        Y = np.swapaxes(Y, 0, 1)
    return Y, (h, c)
