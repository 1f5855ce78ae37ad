"""Model validation, native save/load, fingerprints."""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine import activations as acts
from helpers import make_model, rand


def layer(rng, I=4, H=6, P=None, **kw):
    P = P or H
    d = le.Direction(rand(rng, 4 * H, I), rand(rng, 4 * H, P), rand(rng, 4 * H),
                     proj=rand(rng, P, H) if P != H else None)
    return le.Layer([d], **kw)


@pytest.mark.parametrize("mutate, match", [
    (lambda m, r: setattr(m.layers[0].directions[0], "W", r.random((10, 4))), r"W: expected shape \(4\*hidden_size"),
    (lambda m, r: setattr(m.layers[0].directions[0], "R", r.random((24, 5))), r"R: has 5 columns but hidden_size is 6"),
    (lambda m, r: setattr(m.layers[0].directions[0], "R", r.random((20, 6))), r"R: expected shape \(24"),
    (lambda m, r: setattr(m.layers[0].directions[0], "b", r.random(23)), r"b: expected shape \(24,\), got \(23,\)"),
    (lambda m, r: setattr(m.layers[0].directions[0], "peepholes", r.random(24)), r"peepholes: expected shape \(18,\)"),
    (lambda m, r: setattr(m.layers[0].directions[0], "W", np.full((24, 4), np.nan)), r"layers\[0\].directions\[0\].W: contains NaN"),
    (lambda m, r: setattr(m.layers[0].directions[0], "W", np.array([["a"] * 4] * 24)), "not a numeric array"),
    (lambda m, r: setattr(m.layers[0].directions[0], "activations", (acts.SIGMOID,)), "three Activation"),
    (lambda m, r: setattr(m.layers[0].directions[0], "activations", (acts.Activation("Swish"),) * 3), "unknown activation 'Swish'"),
    (lambda m, r: setattr(m.layers[0], "direction", "sideways"), "direction: 'sideways'"),
    (lambda m, r: setattr(m.layers[0], "direction", "bidirectional"), "needs 2 Direction"),
    (lambda m, r: setattr(m.layers[0], "clip", -1.0), "clip: must be a positive"),
    (lambda m, r: setattr(m.layers[1].directions[0], "W", r.random((24, 5))), r"layers\[1\]: input size 5 does not match the output size 6"),
    (lambda m, r: setattr(m, "layout", 2), "layout must be 0"),
    (lambda m, r: setattr(m, "head", le.Head(r.random((3, 7)))), r"head.weight: expected shape \(O, 6\)"),
    (lambda m, r: setattr(m, "head", le.Head(r.random((3, 6)), r.random(2))), r"head.bias: expected shape \(3,\)"),
    (lambda m, r: setattr(m, "head", le.Head(r.random((3, 6)), None, "Swish")), "head.activation"),
    (lambda m, r: setattr(m, "embedding", le.Embedding(r.random((9, 3)))), "does not match the embedding width"),
    (lambda m, r: setattr(m, "layers", []), "at least one Layer"),
])
def test_validation_names_the_field(rng, mutate, match):
    m = le.Model([layer(rng), layer(rng, I=6)])
    mutate(m, rng)
    with pytest.raises(le.ModelError, match=match):
        le.Model(m.layers, m.embedding, m.head, m.layout)


def test_model_error_is_a_value_error():
    assert issubclass(le.ModelError, ValueError)


def test_bidirectional_sizes_must_agree(rng):
    a, b = layer(rng).directions[0], layer(rng, H=7).directions[0]
    with pytest.raises(le.ModelError, match=r"directions\[1\]: sizes"):
        le.Model([le.Layer([a, b], "bidirectional")])


def test_derived_facts(rng):
    m = make_model(rng, 5, (8, 6), direction=["bidirectional", "forward"], proj=[3, None], vocab=20, head=4)
    assert m.input_size == 1 and m.output_size == 4
    assert m.state_sizes == [(3, 8), (3, 8), (6, 6)]
    assert not m.streamable and make_model(rng, 5, (8,)).streamable
    assert m.layers[1].input_size == 6


def test_weights_are_float32_contiguous(rng):
    d = le.Direction(np.asfortranarray(rng.random((24, 4))), rng.random((24, 6)))
    m = le.Model([le.Layer([d])])
    w = m.layers[0].directions[0]
    assert w.W.dtype == np.float32 and w.W.flags.c_contiguous and not w.b.any()


def test_save_load_round_trip(rng, tmp_path):
    m = make_model(rng, 5, (8, 6), direction=["bidirectional", "forward"], proj=[3, None], peep=True,
                   clip=1.5, input_forget=[True, False], vocab=20, head=4, head_act="Softmax", layout=1,
                   activations=[(acts.make("HardSigmoid", 0.3, 0.6), acts.TANH, acts.make("ScaledTanh", 0.5, 2)),
                                acts.DEFAULT])
    path = tmp_path / "m.lstm"
    m.save(path)
    m2 = le.load(path)
    assert m2.fingerprint() == m.fingerprint()
    assert m2.layers[0].directions[0].activations[2] == acts.make("ScaledTanh", 0.5, 2.0)
    assert m2.layers[0].clip == 1.5 and m2.layers[0].input_forget and m2.layout == 1
    X = rng.integers(0, 20, (3, 7))
    Y1, _ = le.Engine(m).run(X)
    Y2, _ = le.Engine(m2).run(X)
    assert np.array_equal(Y1, Y2)


def test_fingerprint_sees_weights_and_options(rng):
    m = make_model(rng, 5, (8,))
    fp = m.fingerprint()
    m2 = le.Model(m.layers, layout=1)
    assert m2.fingerprint() != fp
    d = m.layers[0].directions[0]
    d2 = le.Direction(d.W.copy(), d.R, d.b)
    d2.W[0, 0] += 1e-3
    assert le.Model([le.Layer([d2])]).fingerprint() != fp


def test_damaged_native_files(rng, tmp_path):
    m = make_model(rng, 5, (8,))
    path = tmp_path / "m.lstm"
    m.save(path)
    data = path.read_bytes()
    cases = {"truncated": data[:len(data) // 2], "empty": b"", "garbage": b"\x00" * 100,
             "header": data[:8] + b"[" + data[9:]}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.lstm"
        p.write_bytes(blob)
        with pytest.raises(le.ModelError):
            le.load(p)
    with pytest.raises(le.ModelError, match="no such file"):
        le.load(tmp_path / "missing.lstm")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "w.lstm"
    save_file({"x": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(le.ModelError, match="without lstm-engine metadata"):
        le.Model.load(p)


def test_newer_format_version_is_refused(rng, tmp_path):
    import json

    from safetensors.numpy import save_file

    m = make_model(rng, 5, (8,))
    meta = m._meta()
    meta["version"] = 99
    p = tmp_path / "future.lstm"
    save_file(m._tensors(), str(p), metadata={"lstm-engine": json.dumps(meta)})
    with pytest.raises(le.ModelError, match="version 99"):
        le.load(p)


def test_missing_tensor_is_named(rng, tmp_path):
    import json

    from safetensors.numpy import save_file

    m = make_model(rng, 5, (8,), peep=True)
    t = m._tensors()
    del t["layers.0.0.peepholes"]
    meta = m._meta()
    p = tmp_path / "x.lstm"
    save_file(t, str(p), metadata={"lstm-engine": json.dumps(meta)})
    # peepholes are optional in the file, so the model loads without them...
    assert le.load(p).layers[0].directions[0].peepholes is None
    del t["layers.0.0.R"]
    save_file(t, str(p), metadata={"lstm-engine": json.dumps(meta)})
    with pytest.raises(le.ModelError, match="missing tensor 'layers.0.0.R'"):
        le.load(p)


def _native_with(tmp_path, rng, change):
    """A native file whose metadata went through change(meta)."""
    import json

    from safetensors.numpy import save_file

    m = make_model(rng, 5, (8,), clip=3.0, activations=(acts.make("LeakyRelu", 0.1), acts.TANH, acts.TANH))
    meta = m._meta()
    change(meta)
    p = tmp_path / "x.lstm"
    save_file(m._tensors(), str(p), metadata={"lstm-engine": json.dumps(meta)})
    return p


def _set_layer(key, value):
    return lambda meta: meta["layers"][0].__setitem__(key, value)


def _set_alpha(value):
    return lambda meta: meta["layers"][0]["directions"][0]["activations"][0].__setitem__(1, value)


@pytest.mark.parametrize("change, match", [
    (_set_layer("clip", 10 ** 400), r"layers\[0\].clip: must be a finite number within float32 range"),
    (_set_layer("clip", float("inf")), r"layers\[0\].clip: must be a finite number"),
    (_set_layer("clip", "1.5"), r"layers\[0\].clip: expected a number, got str"),
    (_set_layer("input_forget", "no"), r"layers\[0\].input_forget: expected a bool"),
    (_set_layer("direction", ["forward"]), r"layers\[0\].direction: \['forward'\] is not one of"),
    (_set_alpha(10 ** 400), r"layers\[0\].directions\[0\].activations: must be a finite number within float32"),
    (_set_alpha(1e39), "within float32 range, got 1e\\+39"),
    (_set_alpha(float("nan")), "got nan"),
    (_set_alpha("0.5"), "expected a number, got str"),
    (_set_alpha(True), "expected a number, got bool"),
    (lambda meta: meta.__setitem__("layout", True), "layout must be 0"),
    (lambda meta: meta["layers"].__setitem__(0, 5), r"damaged metadata: layers\[0\] is a int, not an object"),
    (lambda meta: meta["layers"][0].pop("clip"), r"damaged metadata: layers\[0\] has no 'clip'"),
    (lambda meta: meta.__setitem__("head", []), "damaged metadata: metadata.head is a list"),
    (lambda meta: meta["layers"][0]["directions"][0].__setitem__("activations", "x"),
     r"layers\[0\].directions\[0\].activations is a str"),
    (lambda meta: meta["layers"][0]["directions"][0]["activations"][1].pop(),
     r"activations\[1\] is \['Tanh', 0.0\], not \[name, alpha, beta\]"),
], ids=["clip-10^400", "clip-inf", "clip-str", "input_forget-str", "direction-list", "alpha-10^400",
        "alpha-1e39", "alpha-nan", "alpha-str", "alpha-bool", "layout-bool", "layer-int", "clip-missing",
        "head-list", "activations-str", "activation-pair"])
def test_native_metadata_numbers_are_checked(rng, tmp_path, change, match):
    """Every number in the metadata is a finite float32 (or the bool/choice it stands for):
    never an OverflowError, and never a NaN that would poison every state."""
    p = _native_with(tmp_path, rng, change)
    with pytest.raises(le.ModelError, match=match):
        le.load(p)


@pytest.mark.parametrize("act, field", [
    (acts.Activation("LeakyRelu", float("nan")), "alpha"),
    (acts.Activation("ScaledTanh", 1.0, float("inf")), "beta"),
    (acts.Activation("Elu", 1e39), "alpha"),
    (acts.Activation("Affine", "2"), "alpha"),
], ids=["nan", "inf", "beyond-float32", "str"])
def test_model_refuses_non_finite_activation_parameters(rng, act, field):
    """At construction, and again when validated after a change (as an Engine does)."""
    with pytest.raises(le.ModelError, match=rf"layers\[0\].directions\[0\].activations\[1\].{field}"):
        make_model(rng, 4, (6,), activations=(acts.SIGMOID, act, acts.TANH))
    m = make_model(rng, 4, (6,))
    m.layers[0].directions[0].activations = (acts.SIGMOID, act, acts.TANH)
    with pytest.raises(le.ModelError, match=rf"activations\[1\].{field}"):
        m._validate()
