"""Model(...) with wrong option types: a ModelError naming the field (issue 12 item 10)."""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine import activations as acts
from lstm_engine.model import Direction, Layer


def _direction(**kw):
    return Direction(np.zeros((16, 3), np.float32), np.zeros((16, 4), np.float32), **kw)


@pytest.mark.parametrize("layer_kw, dir_kw, match", [
    (dict(clip="1.0x"), {}, r"layers\[0\].clip: expected a number, got str"),
    (dict(clip=[1]), {}, r"layers\[0\].clip: expected a number, got list"),
    ({}, dict(activations=None), r"activations: expected three Activation"),
])
def test_wrong_option_types_are_model_errors(layer_kw, dir_kw, match):
    with pytest.raises(le.ModelError, match=match):
        le.Model([Layer([_direction(**dir_kw)], "forward", **layer_kw)])


def test_activation_names_in_any_case():
    model = le.Model([Layer([_direction(activations=(acts.Activation("sigmoid"), acts.Activation("TANH"),
                                                      acts.Activation("tanh")))], "forward")])
    assert model.layers[0].directions[0].activations == acts.DEFAULT
    with pytest.raises(le.ModelError, match="unknown activation 'Swish'; supported: Sigmoid"):
        le.Model([Layer([_direction(activations=(acts.Activation("Swish"),) * 3)], "forward")])
