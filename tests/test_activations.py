"""Activation parameters as onnxruntime reads them, and the kernels' math vs NumPy's."""
import numpy as np
import pytest

from lstm_engine import activations as acts
from lstm_engine.kernels.pointwise import _act_inplace


def test_alpha_beta_are_consumed_in_order_by_those_that_take_them():
    got = acts.from_onnx_lists(["Sigmoid", "LeakyRelu", "tanh", "ScaledTanh", "HardSigmoid", "Affine"],
                               [0.1, 0.2, 0.3], [0.4])
    assert got == [acts.Activation("Sigmoid"), acts.make("LeakyRelu", 0.1),
                   acts.Activation("Tanh"), acts.make("ScaledTanh", 0.2, 0.4),
                   acts.make("HardSigmoid", 0.3), acts.Activation("Affine", 0.0, 0.0)]


def test_round_trip_through_onnx_lists():
    a = [acts.make("Elu", 0.7), acts.make("Softplus"), acts.make("Affine", 2, 3)]
    assert acts.from_onnx_lists(*acts.to_onnx_lists(a)) == a


def test_unknown_name():
    with pytest.raises(KeyError):
        acts.make("Swish")
    assert acts.canonical_name("LEAKYRELU") == "LeakyRelu"


@pytest.mark.parametrize("name", acts.NAMES)
def test_kernel_matches_numpy(name):
    a = acts.make(name, *{"LeakyRelu": (0.2, None), "ThresholdedRelu": (0.25, None),
                          "ScaledTanh": (1.5, 0.7), "HardSigmoid": (0.3, 0.4), "Elu": (0.8, None),
                          "Affine": (0.6, -0.2)}.get(name, (None, None)))
    x = np.concatenate([np.linspace(-30, 30, 2001), [-1e4, -88.0, 0.0, 88.0, 1e4]]).astype(np.float32)
    got = x.copy()
    _act_inplace(a.code, np.float32(a.alpha), np.float32(a.beta), got)
    want = acts.apply(a, x.astype(np.float64))
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())
