"""Mutated model files give a Model or a ModelError -- never another exception (DESIGN §7)."""
import numpy as np
import pytest

import lstm_engine as le
from converters import from_onnx, from_torch, to_onnx
from converters.torch_import import _read_zip_checkpoint
from helpers import make_model

N = 150


def mutations(data: bytes, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(N):
        b = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            b[rng.integers(0, len(b))] = rng.integers(0, 256)
        yield bytes(b)


def survives(load, data, tmp_path, suffix):
    p = tmp_path / f"m{suffix}"
    for blob in mutations(data, len(data)):
        p.write_bytes(blob)
        try:
            le.Engine(load(p))
        except le.ModelError:
            pass


def test_mutated_onnx(rng, tmp_path):
    proto = to_onnx(make_model(rng, 4, (8, 6), head=3, head_act="Softmax", peep=True), with_state=True,
                    with_lengths=True)
    survives(from_onnx, proto.SerializeToString(), tmp_path, ".onnx")


def test_mutated_native(rng, tmp_path):
    make_model(rng, 4, (8,), peep=True).save(tmp_path / "ok.lstm")
    survives(le.load, (tmp_path / "ok.lstm").read_bytes(), tmp_path, ".lstm")


def test_mutated_checkpoints_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.LSTM(3, 4, num_layers=2).state_dict(), tmp_path / "ok.pt")
    survives(lambda p: from_torch(_read_zip_checkpoint(p)), (tmp_path / "ok.pt").read_bytes(), tmp_path, ".pt")


def test_mutated_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file(dict(torch.nn.LSTM(3, 4).state_dict()), str(tmp_path / "ok.safetensors"))
    survives(from_torch, (tmp_path / "ok.safetensors").read_bytes(), tmp_path, ".safetensors")
