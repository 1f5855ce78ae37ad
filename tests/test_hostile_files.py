"""Mutated and crafted model files give a Model or a ModelError -- never another exception (DESIGN §7)."""
import json
import struct

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


def _lying_safetensors(path, change):
    """A valid nn.LSTM(3, 4) safetensors file, then its header changed by change(header)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in
               {"weight_ih_l0": (16, 3), "weight_hh_l0": (16, 4), "bias_ih_l0": (16,), "bias_hh_l0": (16,)}.items()},
              str(path))
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = change(json.loads(data[8:8 + n]))
    h = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])


def _set(key, value):
    def change(header):
        header["weight_ih_l0"][key] = value
        return header
    return change


@pytest.mark.parametrize("change", [
    lambda h: [h],  # a header that is not an object
    lambda h: "[" * 100000 + "]" * 100000,  # nesting deeper than the JSON parser recurses
    _set("shape", [-16, -3]),  # negative dims whose product fits the bytes
    _set("shape", [16.0, 3.0]),
    _set("shape", [True, 16, 3]),
    _set("data_offsets", ["0", "192"]),
    _set("data_offsets", [0, 96, 192]),
    lambda h: {**h, "weight_ih_l0": [1, 2]},
], ids=["list", "deep", "negative-shape", "float-shape", "bool-shape", "string-offsets", "three-offsets",
        "entry-not-object"])
def test_crafted_safetensors_headers(tmp_path, change):
    """Well-formed JSON that lies about one tensor of an otherwise loadable file: a
    ModelError, whatever the lie."""
    p = tmp_path / "m.safetensors"
    _lying_safetensors(p, lambda h: h)
    from_torch(p)  # loads as it is
    _lying_safetensors(p, change)
    with pytest.raises(le.ModelError):
        from_torch(p)


def test_native_metadata_nested_too_deep(tmp_path):
    from safetensors.numpy import save_file

    from lstm_engine.model import FORMAT

    save_file({"a": np.zeros(1, np.float32)}, str(tmp_path / "deep.lstm"), metadata={FORMAT: "[" * 100000 + "]" * 100000})
    with pytest.raises(le.ModelError, match="damaged metadata"):
        le.load(tmp_path / "deep.lstm")


@pytest.mark.parametrize("reader", ["torch", "restricted"])
def test_checkpoint_tensor_repeating_its_storage(tmp_path, reader):
    """A 2-byte storage viewed as 2^27 elements (stride 0) would unpack into 512 MB of
    float32: refused by both readers before anything that large is made."""
    torch = pytest.importorskip("torch")
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["buffer"] = torch.zeros(1, dtype=torch.float16).expand(1 << 27)
    torch.save(sd, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 1 << 20
    with pytest.raises(le.ModelError, match="expanded view"):
        from_torch(tmp_path / "bomb.pt" if reader == "torch" else _read_zip_checkpoint(tmp_path / "bomb.pt"))
