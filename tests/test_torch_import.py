"""converters.from_torch: state dicts, .pt/.pth and .safetensors, with and without torch;
hostile and damaged files are refused and run nothing."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lstm_engine as le
from converters import from_torch
from helpers import TOL, maxdiff

torch = pytest.importorskip("torch")


def lstm_out(m, x):
    with torch.no_grad():
        y, (h, c) = m(x)
    return y.numpy(), h.numpy(), c.numpy()


@pytest.mark.parametrize("kw", [
    dict(num_layers=3), dict(num_layers=2, bidirectional=True), dict(num_layers=2, proj_size=4),
    dict(bias=False), dict(batch_first=True, bidirectional=True, proj_size=3), dict(num_layers=1),
], ids=["stack", "bidirectional", "proj", "no-bias", "batch-first-bidir-proj", "single"])
def test_nn_lstm_matches_torch(kw):
    torch.manual_seed(0)
    m = torch.nn.LSTM(6, 11, **kw).eval()
    x = torch.randn(3, 20, 6) if kw.get("batch_first") else torch.randn(20, 3, 6)
    y, h, c = lstm_out(m, x)
    model = from_torch(m.state_dict(), batch_first=kw.get("batch_first", False))
    Y, (he, ce) = le.Engine(model).run(x.numpy())
    assert maxdiff(Y, y) <= TOL and maxdiff(np.stack(he), h) <= TOL and maxdiff(np.stack(ce), c) <= TOL


def test_lstm_cell_under_a_prefix_streams_like_torch():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(5, 7)
    xs = torch.randn(30, 5)
    h, c, ys = torch.zeros(1, 7), torch.zeros(1, 7), []
    with torch.no_grad():
        for x in xs:
            h, c = cell(x[None], (h, c))
            ys.append(h[0].numpy())
    model = from_torch({"encoder.cell." + k: v for k, v in cell.state_dict().items()})
    s = le.Engine(model).open_stream()
    assert maxdiff(np.stack([s.step(x) for x in xs.numpy()]), np.stack(ys)) <= TOL


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 8)
        self.rnn = torch.nn.LSTM(8, 16, num_layers=2)
        self.out = torch.nn.Linear(16, 40)

    def forward(self, ids):
        return torch.log_softmax(self.out(self.rnn(self.emb(ids))[0]), -1)


def test_embedding_and_head_by_prefix():
    torch.manual_seed(0)
    net = Tagger().eval()
    ids = torch.randint(0, 40, (25, 2))
    with torch.no_grad():
        want = net(ids).numpy()
    model = from_torch(net.state_dict(), head="out", embedding="emb", head_activation="LogSoftmax")
    Y, _ = le.Engine(model).run(ids.numpy())
    assert maxdiff(Y, want) <= TOL
    s = le.Engine(model).open_stream()
    assert maxdiff(np.stack([s.step(int(t)) for t in ids[:, 1]]), want[:, 1]) <= TOL


def test_unused_tensors_are_named(tmp_path):
    """An Embedding + LSTM + Linear state dict loaded without embedding= / head= would run as
    a bare LSTM: the warning names the tensors left out and the options that take them."""
    import warnings

    sd = Tagger().state_dict()
    torch.save(sd, tmp_path / "tagger.pt")
    for load in (lambda: from_torch(sd), lambda: le.load(tmp_path / "tagger.pt")):
        with pytest.warns(UserWarning, match=r"not used by the model: \['emb.weight', 'out.weight', 'out.bias'\]; "
                                             r"from_torch\(\.\.\., embedding='emb', head='out'\)"):
            assert load().head is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch(sd, head="out", embedding="emb")


def test_prefix_choice():
    a, b = torch.nn.LSTM(3, 4), torch.nn.LSTM(4, 5)
    sd = {**{"enc." + k: v for k, v in a.state_dict().items()}, **{"dec." + k: v for k, v in b.state_dict().items()}}
    with pytest.raises(le.ModelError, match=r"several LSTMs: \['dec.', 'enc.'\]"):
        from_torch(sd)
    with pytest.warns(UserWarning, match=r"not used by the model: \['enc.weight_ih_l0'"):
        assert from_torch(sd, prefix="dec").layers[0].hidden_size == 5
    with pytest.raises(le.ModelError, match="no LSTM under prefix 'mid.'"):
        from_torch(sd, prefix="mid")
    with pytest.raises(le.ModelError, match="no nn.LSTM"):
        from_torch({"fc.weight": torch.zeros(2, 2)})


def test_missing_and_inconsistent_keys():
    sd = dict(torch.nn.LSTM(3, 4, num_layers=2).state_dict())
    del sd["weight_hh_l1"]
    with pytest.raises(le.ModelError, match="missing key 'weight_hh_l1'"):
        from_torch(sd)
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["bias_ih_l0"] = torch.zeros(5)
    with pytest.raises(le.ModelError, match=r"'bias_ih_l0' has shape \(5,\)"):
        from_torch(sd)
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["weight_ih_l2"] = torch.zeros(16, 4)
    with pytest.raises(le.ModelError, match="do not fit"):
        from_torch(sd)
    with pytest.raises(le.ModelError, match="head_activation"):
        from_torch(torch.nn.LSTM(3, 4).state_dict(), head_activation="Softmax")


@pytest.fixture
def saved(tmp_path):
    """A real nn.LSTM, its outputs on a fixed input, and its weights in every file format."""
    torch.manual_seed(1)
    m = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).eval()
    sd = m.state_dict()
    x = torch.randn(12, 2, 4)
    y, h, c = lstm_out(m, x)
    files = {"zip": tmp_path / "m.pt", "legacy": tmp_path / "legacy.pth", "nested": tmp_path / "ckpt.pt",
             "safetensors": tmp_path / "m.safetensors", "half": tmp_path / "half.pt", "bf16": tmp_path / "bf16.safetensors"}
    torch.save(sd, files["zip"])
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "state_dict": sd, "lr": 0.1}, files["nested"])
    torch.save({k: v.half() for k, v in sd.items()}, files["half"])
    from safetensors.torch import save_file

    save_file(dict(sd), str(files["safetensors"]))
    save_file({k: v.bfloat16() for k, v in sd.items()}, str(files["bf16"]))
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y)
    return files, x.numpy(), y


@pytest.mark.parametrize("kind", ["zip", "legacy", "nested", "safetensors"])
def test_files_with_torch(saved, kind):
    files, x, y = saved
    model = from_torch(files[kind])
    assert maxdiff(le.Engine(model).run(x)[0], y) <= TOL
    assert le.load(files[kind]).fingerprint() == model.fingerprint()


@pytest.mark.parametrize("kind, tol", [("half", 5e-3), ("bf16", 5e-2)])
def test_reduced_precision_files(saved, kind, tol):
    files, x, y = saved
    assert maxdiff(le.Engine(from_torch(files[kind])).run(x)[0], y) <= tol


def _evil_pickle(marker):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    return pickle.dumps({"weight_ih_l0": Evil()}, protocol=2)


def _evil_zip(path, marker, template):
    with zipfile.ZipFile(template) as z, zipfile.ZipFile(path, "w") as out:
        for name in z.namelist():
            data = _evil_pickle(marker) if name.endswith("data.pkl") else z.read(name)
            out.writestr(name, data)


def test_pickle_payloads_are_refused_with_torch(saved, tmp_path):
    files, _, _ = saved
    marker = tmp_path / "pwned"
    _evil_zip(tmp_path / "evil.pt", marker, files["zip"])
    (tmp_path / "evil_legacy.pt").write_bytes(_evil_pickle(marker))
    for name in ("evil.pt", "evil_legacy.pt"):
        with pytest.raises(le.ModelError):
            from_torch(tmp_path / name)
    assert not marker.exists()


NO_TORCH = """
import builtins, sys
real_import = builtins.__import__
def guarded(name, *a, **k):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this test")
    return real_import(name, *a, **k)
builtins.__import__ = guarded
import json, numpy as np, lstm_engine as le
from converters import from_torch
d = sys.argv[1]
out = {}
for name in sys.argv[2:]:
    try:
        m = from_torch(f"{d}/{name}")
        Y, _ = le.Engine(m).run(np.load(f"{d}/x.npy"))
        out[name] = float(np.abs(Y - np.load(f"{d}/y.npy")).max())
    except le.ModelError as e:
        out[name] = "ModelError: " + str(e)
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def run_without_torch(folder, *names):
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(folder), *names], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _zip_bomb(path, real):
    """real's members, deflated, with its first tensor storage swapped for 64 MB of zeros
    (~64 KB compressed): reading that tensor would unpack all of it."""
    import zipfile

    with zipfile.ZipFile(real) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        storages = [n for n in src.namelist() if "/data/" in n]
        for info in src.infolist():
            dst.writestr(info.filename, bytes(64 << 20) if info.filename == storages[0] else src.read(info))


def test_zip_bomb_is_refused_before_decompressing(saved, tmp_path):
    files, _, _ = saved
    _zip_bomb(tmp_path / "bomb.pt", files["zip"])
    assert (tmp_path / "bomb.pt").stat().st_size < 1 << 20
    with pytest.raises(le.ModelError, match="claim .* bytes from a .*-byte file"):
        from_torch(tmp_path / "bomb.pt")


def test_without_torch(saved, tmp_path):
    files, _, _ = saved
    marker = tmp_path / "pwned"
    _evil_zip(tmp_path / "evil.pt", marker, files["zip"])
    _zip_bomb(tmp_path / "bomb.pt", files["zip"])
    (tmp_path / "evil_legacy.pt").write_bytes(_evil_pickle(marker))
    data = files["zip"].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    out = run_without_torch(tmp_path, "m.pt", "ckpt.pt", "half.pt", "m.safetensors", "bf16.safetensors",
                            "legacy.pth", "evil.pt", "evil_legacy.pt", "truncated.pt", "bomb.pt")
    assert out.pop("torch_loaded") is False
    assert out["m.pt"] <= TOL and out["ckpt.pt"] <= TOL and out["m.safetensors"] <= TOL
    assert out["half.pt"] <= 5e-3 and out["bf16.safetensors"] <= 5e-2
    assert "legacy" in out["legacy.pth"] and "needs torch" in out["legacy.pth"]
    assert "posix.system" in out["evil.pt"] or "os.system" in out["evil.pt"]
    assert "needs torch" in out["evil_legacy.pt"]
    assert out["truncated.pt"].startswith("ModelError")
    assert "bytes from a" in out["bomb.pt"]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_truncated_and_damaged_files(saved, tmp_path, kind):
    files, _, _ = saved
    data = files[kind].read_bytes()
    suffix = files[kind].suffix
    for name, blob in {"half": data[:len(data) // 2], "head": data[:40], "empty": b"",
                       "noise": os.urandom(500)}.items():
        p = tmp_path / f"bad_{name}{suffix}"
        p.write_bytes(blob)
        with pytest.raises(le.ModelError):
            from_torch(p)


def test_safetensors_offsets_outside_the_file(tmp_path):
    header = json.dumps({"weight_ih_l0": {"dtype": "F32", "shape": [16, 3], "data_offsets": [0, 192]}}).encode()
    p = tmp_path / "lie.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 10)
    with pytest.raises(le.ModelError, match="outside the file"):
        from_torch(p)


def test_missing_file(tmp_path):
    with pytest.raises(le.ModelError, match="no such file"):
        from_torch(tmp_path / "nope.pt")


@pytest.mark.filterwarnings("ignore:.*(deprecated|TypedStorage).*:UserWarning")  # torch's, about quantized tensors
@pytest.mark.parametrize("extra", ["sparse", "meta", "quantized"])
def test_tensors_that_are_not_dense_arrays(tmp_path, extra):
    """A state dict (or checkpoint) with a sparse, meta or quantized tensor: a ModelError
    that names the key, not torch's own exception."""
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    sd["extra"] = {"sparse": lambda: torch.zeros(3, 3).to_sparse(),
                   "meta": lambda: torch.zeros(3, device="meta"),
                   "quantized": lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8)}[extra]()
    torch.save(sd, tmp_path / "x.pt")
    for src in (sd, tmp_path / "x.pt"):
        with pytest.raises(le.ModelError, match="tensor 'extra' .* is not a dense array"):
            from_torch(src)
