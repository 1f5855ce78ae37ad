"""The command line through main(argv): output, exit codes, JSON, files written."""
import glob
import json

import numpy as np
import onnx
import pytest

import lstm_engine as le
from converters import to_onnx
from helpers import make_model
from lstm_engine import bench
from lstm_engine.cli import main
from lstm_engine.kernels.isa import ISA


@pytest.fixture
def onnx_file(rng, tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(to_onnx(make_model(rng, 5, (12, 8), head=4, head_act="Softmax"), with_state=True), p)
    return p


def test_validate_pass(onnx_file, tmp_path, capsys):
    assert main(["validate", str(onnx_file), "--steps", "30", "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "reference: onnxruntime" in out and out.strip().endswith("PASS (tolerance 0.0001 on max abs error)")
    res = json.loads((tmp_path / "v.json").read_text())
    rows = {(r["output"], r["mode"]) for r in res["results"]}
    assert rows == {(n, m) for n in ("Y", "hn_0", "cn_0", "hn_1", "cn_1") for m in ("offline", "stream")}
    assert res["pass"] and all(r["max_abs"] <= 1e-4 for r in res["results"])
    assert res["inputs"]["X"] == [30, 2, 5]


@pytest.mark.parametrize("precision, bound", [("bf16", 5e-2), ("int8", 2e-1)])
def test_validate_reduced_precision(onnx_file, tmp_path, capsys, precision, bound):
    assert main(["validate", str(onnx_file), "--steps", "30", "--precision", precision,
                 "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert f"lstm-engine in {precision}" in out and f"PASS (tolerance {bound:g}" in out
    res = json.loads((tmp_path / "v.json").read_text())
    errs = [r["max_abs"] for r in res["results"]]
    assert res["precision"] == precision and 1e-4 < max(errs) <= bound  # rounded weights move outputs
    assert main(["validate", str(onnx_file), "--steps", "30", "--precision", precision, "--tol", "1e-6"]) == 1


def test_validate_fail_exit_1(onnx_file, capsys):
    assert main(["validate", str(onnx_file), "--tol", "1e-12"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_validate_with_inputs_file(onnx_file, rng, tmp_path, capsys):
    feeds = {"X": rng.uniform(-1, 1, (7, 1, 5)).astype(np.float32)}
    for li, H in enumerate((12, 8)):
        feeds[f"h0_{li}"] = np.zeros((1, 1, H), np.float32)
        feeds[f"c0_{li}"] = np.zeros((1, 1, H), np.float32)
    np.savez(tmp_path / "in.npz", **feeds)
    assert main(["validate", str(onnx_file), "--inputs", str(tmp_path / "in.npz")]) == 0
    assert "X (7, 1, 5)" in capsys.readouterr().out


def test_validate_torch_export(tmp_path, capsys):
    from torch_models import Net, export, torch

    torch.manual_seed(0)
    net = Net(layers=2, head=5, act="logsoftmax").eval()
    onnx.save(export(net, net.example(), dynamo=False), tmp_path / "t.onnx")
    assert main(["validate", str(tmp_path / "t.onnx")]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 7  # y, hn, cn offline and streamed, and the verdict


def test_validate_external_data_runs_onnxruntime(rng, tmp_path, monkeypatch, capsys):
    """Weights in an external file (initializers and a Constant node) reach onnxruntime
    inline, read with the converter's folder checks, so the reference stays onnxruntime."""
    from onnx import helper
    from onnx.external_data_helper import convert_model_to_external_data

    proto = to_onnx(make_model(rng, 5, (8,), head=3), with_state=True)
    b = proto.graph.initializer.pop(0)  # one weight travels in a Constant node instead
    proto.graph.node.insert(0, helper.make_node("Constant", [], [b.name], value=b))
    p = tmp_path / "m" / "m.onnx"
    p.parent.mkdir()
    convert_model_to_external_data(proto, location="w.bin", size_threshold=0, convert_attribute=True)
    onnx.save(proto, p)
    stored = onnx.load(p, load_external_data=False)
    assert stored.graph.node[0].attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    monkeypatch.chdir(tmp_path)  # the data must be found beside the model, not in the working directory
    assert main(["validate", str(p), "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "reference: onnxruntime" in out and out.strip().endswith("PASS (tolerance 0.0001 on max abs error)")


def test_validate_layout1_falls_back_to_reference(rng, tmp_path, capsys):
    """onnxruntime refuses layout=1 LSTM nodes: the float64 reference stands in."""
    from onnx import TensorProto, helper, numpy_helper

    W, R = rng.uniform(-0.5, 0.5, (1, 16, 3)).astype(np.float32), rng.uniform(-0.5, 0.5, (1, 16, 4)).astype(np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=4, layout=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", 3])],
                          [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 9
    onnx.save(m, tmp_path / "l1.onnx")
    assert main(["validate", str(tmp_path / "l1.onnx")]) == 0
    out = capsys.readouterr().out
    assert "float64 reference, NOT onnxruntime (onnxruntime:" in out
    # the verdict line says so too: a PASS against its own reference is no PASS against onnxruntime
    assert out.strip().splitlines()[-1].startswith("PASS against lstm-engine's own float64 reference, NOT onnxruntime")


def test_convert_round_trips(rng, tmp_path, capsys):
    model = make_model(rng, 5, (12,), direction="bidirectional", head=3)
    onnx.save(to_onnx(model), tmp_path / "a.onnx")
    assert main(["convert", str(tmp_path / "a.onnx"), str(tmp_path / "a.lstm")]) == 0
    assert main(["convert", str(tmp_path / "a.lstm"), str(tmp_path / "b.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    X = rng.uniform(-1, 1, (9, 2, 5)).astype(np.float32)
    outs = [le.Engine(le.load(tmp_path / n)).run(X)[0] for n in ("a.onnx", "a.lstm", "b.onnx")]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_convert_torch_checkpoint_with_options(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_models import Net

    torch.save(Net(layers=2, vocab=30, head=30).state_dict(), tmp_path / "t.pt")
    assert main(["convert", str(tmp_path / "t.pt"), str(tmp_path / "t.lstm"), "--prefix", "lstm", "--embedding",
                 "emb", "--head", "head", "--head-activation", "Softmax"]) == 0
    m = le.load(tmp_path / "t.lstm")
    assert m.embedding.vocab_size == 30 and m.head.activation == "Softmax"


def test_info(rng, tmp_path, capsys):
    model = make_model(rng, 5, (12, 6), direction=["bidirectional", "forward"], proj=[4, None], peep=True,
                       clip=[2.0, None], vocab=40, head=40, head_act="LogSoftmax")
    model.save(tmp_path / "m.lstm")
    assert main(["info", str(tmp_path / "m.lstm")]) == 0
    out = capsys.readouterr().out
    n = model.num_parameters()
    assert f"parameters: {n:,}" in out and "embedding: 40 tokens x 5" in out
    assert "head: 6 -> 40 + bias, activation LogSoftmax" in out
    assert "bidirectional" in out and "streaming: no (layers [0] run in reverse" in out
    assert f"kernels: {le.kernel_isa()} ({ISA.key}) on {bench.cpu_info()['cpu']}" in out
    lines = out.splitlines()
    row0 = next(l for l in lines if l.strip().startswith("0 bidirectional"))
    assert row0.split()[2:5] == ["5", "12", "4"] and "2.0" in row0


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.onnx"], "missing.onnx: no such file"),
    (["validate", "missing.onnx"], "no such file"),
    (["bench", "--against", "foo"], "unknown peer(s) ['foo']"),
    (["bench", "--threads", "0", "--hidden", "8", "--steps", "3", "--against", ""], "threads=0: expected a whole number"),
    (["frobnicate"], "invalid choice"),
    (["bench", "--hidden", "x"], "invalid whole_number value"),
    (["bench", "--chunk", "0"], "argument --chunk: expected a whole number >= 1, got 0"),
    (["bench", "--hidden", "64", "0"], "argument --hidden: expected a whole number >= 1, got 0"),
    (["bench", "--streams", "-1"], "argument --streams: expected a whole number >= 0, got -1"),
    (["validate", "m.onnx", "--steps", "0"], "argument --steps: expected a whole number >= 1, got 0"),
])
def test_errors_are_one_line_exit_2(argv, message, capsys):
    err = capsys.readouterr().err  # drop anything earlier
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("lstm-engine: error:")
    assert not any(line.startswith("Traceback") for line in err)


def run(argv) -> int:
    """main(argv)'s exit code, also when argparse exits by itself."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_damaged_model_exit_2_and_debug_traceback(tmp_path, capsys):
    p = tmp_path / "g.onnx"
    p.write_bytes(b"not a model")
    assert main(["validate", str(p)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    with pytest.raises(le.ModelError):
        main(["--debug", "validate", str(p)])


def test_bench_structure(tmp_path, capsys):
    argv = ["bench", "--hidden", "8", "16", "--steps", "40", "--chunk", "5", "--against", "ort,torch,openvino",
            "--streams", "3", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")]
    assert main(argv) == 0
    cap = capsys.readouterr()
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data) == {"machine_info", "benchmarks", "datetime", "version"}
    assert {"cpu", "cores", "isa", "python", "numba", "onnxruntime"} <= set(data["machine_info"])
    assert [b["hidden"] for b in data["benchmarks"]] == [8, 16]
    for b in data["benchmarks"]:
        assert "lstm-engine" in b["step"] and "onnxruntime" in b["step"] and b["chunk"] == 5
        assert b["streams"] == 3 and set(b["many"]) == set(b["step"])
        for stats in list(b["step"].values()) + list(b["run"].values()) + list(b["many"].values()):
            assert stats["median_us"] > 0 and stats["p99_us"] >= stats["median_us"]
    for name in ("lstm-engine", "onnxruntime", "numpy BLAS"):
        assert name in cap.out
    assert "benchmarking H=8" in cap.err and "disagrees" not in cap.err  # the peers compute the same LSTM
    try:
        import openvino  # noqa: F401
        assert "openvino" in cap.out
    except ImportError:
        assert "openvino: not installed, skipped" in cap.err
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_a_model_file(rng, tmp_path, capsys):
    make_model(rng, 6, (8,), vocab=20, head=20, head_act="Softmax").save(tmp_path / "m.lstm")
    assert main(["bench", "--model", str(tmp_path / "m.lstm"), "--steps", "20", "--chunk", "4",
                 "--against", "ort,torch", "--streams", "2"]) == 0
    cap = capsys.readouterr()
    assert "model lstm-engine" in " ".join(cap.out.split()) and "onnxruntime" in cap.out
    assert "model lstm-engine 2" in " ".join(cap.out.split()) and "disagrees" not in cap.err


@pytest.mark.parametrize("precision, nbytes", [("bf16", 2), ("int8", 1), ("int8-dynamic", 1)])
def test_bench_precision(tmp_path, capsys, precision, nbytes):
    assert main(["bench", "--hidden", "16", "--steps", "20", "--chunk", "4", "--against", "ort",
                 "--precision", precision, "--json", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())["benchmarks"][0]
    assert b["precision"] == precision and b["weight_bytes"] == nbytes * (4 * 16 * 16 * 2)
    assert b["blas_bytes"] == 4 * (4 * 16 * 16 * 2)
    assert "disagrees" not in capsys.readouterr().err  # within the rounding of fp32 peers


def _cpuinfo_model_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def test_bench_names_cpu_kernels_and_blas(tmp_path, capsys, monkeypatch):
    """The header and the JSON say what ran: our kernel variant, the CPU, numpy's BLAS kernel."""
    from threadpoolctl import threadpool_info

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # read by OpenBLAS at load: only the report sees it now
    assert main(["bench", "--hidden", "8", "--steps", "20", "--chunk", "4", "--against", "",
                 "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "b.json").read_text())["machine_info"]
    assert info["kernel_isa"] == le.kernel_isa() and info["kernel_variant"] == ISA.key
    assert f"kernels: {le.kernel_isa()} ({ISA.key}) on {info['cpu']}" in out
    if _cpuinfo_model_name():  # Linux on x86; elsewhere the platform's or LLVM's name
        assert info["cpu"] == _cpuinfo_model_name()
    caches = glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")
    assert len(info["cache_bytes"]) == len(caches) and all(v > 0 for v in info["cache_bytes"].values())
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert [(b["internal_api"], b["version"], b["architecture"]) for b in info["blas"]] == \
        [(b["internal_api"], b["version"], b.get("architecture")) for b in blas]
    line = next(line for line in out.splitlines() if line.startswith("numpy BLAS:"))
    assert all(b["version"] in line and (b.get("architecture") or "") in line for b in blas)
    assert line.endswith("(OPENBLAS_CORETYPE=Haswell in the environment)") and info["openblas_coretype"] == "Haswell"


def _bench_openvino(tmp_path, precision):
    assert main(["bench", "--hidden", "8", "--steps", "20", "--chunk", "4", "--against", "openvino",
                 "--precision", precision, "--json", str(tmp_path / "b.json")]) == 0
    return json.loads((tmp_path / "b.json").read_text())["benchmarks"][0]["precisions"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_bench_openvino_precision_is_set(tmp_path, capsys, precision):
    """fp32 and int8 runs meet OpenVINO's f32, bf16 its bf16 where the CPU has it (its
    default would be bf16 there): the report names what it compiled to."""
    ov = pytest.importorskip("openvino")
    native_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    expected = "bf16" if precision == "bf16" and native_bf16 else "f32"
    got = _bench_openvino(tmp_path, precision)
    assert got == {"lstm-engine": precision, "openvino": f"{expected} (INFERENCE_PRECISION_HINT)"}
    out = capsys.readouterr().out
    assert f"precision: lstm-engine {precision}, openvino {expected} (INFERENCE_PRECISION_HINT)" in out


def test_bench_reports_openvino_precision_it_got_not_asked(tmp_path, capsys, monkeypatch):
    ov = pytest.importorskip("openvino")
    real = ov.CompiledModel.get_property
    monkeypatch.setattr(ov.CompiledModel, "get_property", lambda self, key: ov.Type.f16
                        if key == "INFERENCE_PRECISION_HINT" else real(self, key))
    assert _bench_openvino(tmp_path, "fp32")["openvino"] == "f16 (INFERENCE_PRECISION_HINT)"
    assert "openvino f16 (INFERENCE_PRECISION_HINT)" in capsys.readouterr().out


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_bench_int8_peers_and_their_error(tmp_path, capsys):
    """--precision int8 times onnxruntime's and PyTorch's int8 LSTMs beside ours in every
    mode, and reports every system's error against lstm-engine fp32, in text and JSON."""
    assert main(["bench", "--hidden", "16", "--steps", "20", "--chunk", "6", "--streams", "3", "--precision", "int8",
                 "--against", "ort,torch", "--json", str(tmp_path / "b.json")]) == 0
    cap = capsys.readouterr()
    b = json.loads((tmp_path / "b.json").read_text())["benchmarks"][0]
    peers = {name: module for module, names in (("onnxruntime", ("onnxruntime", "onnxruntime int8")),
                                                ("torch", ("pytorch", "pytorch int8"))) for name in names}
    names = {"lstm-engine"} | {name for name, module in peers.items() if _installed(module)}
    assert set(b["step"]) == set(b["run"]) == set(b["many"]) == names
    assert set(b["error"]) == {"chunk", "streams"}
    for mode in ("chunk", "streams"):
        errors = b["error"][mode]
        assert set(errors) == names
        for name, e in errors.items():
            assert 0 <= e["mean_abs"] <= e["max_abs"]
            # the fp32 peers agree with fp32; the int8 systems move outputs, within bench's 1e-1
            assert e["max_abs"] <= 1e-5 if name in ("onnxruntime", "pytorch") else 1e-5 < e["max_abs"] <= 1e-1
    if "onnxruntime int8" in names:
        assert b["precisions"]["onnxruntime int8"] == "u8s8 (DynamicQuantizeLSTM)"
    if "pytorch int8" in names:
        assert b["precisions"]["pytorch int8"].startswith("u8s8 (quantize_dynamic, ")
    err = b["error"]
    assert "chunk max" in cap.out and "3 streams max" in cap.out  # the error table's header
    for name in names:  # a row in the step/chunk table, the streams table and the error table
        rows = [line[len(f"{'H=16':>8} {name:<{bench.NAME}}"):].split() for line in cap.out.splitlines()
                if line.startswith(f"{'H=16':>8} {name:<{bench.NAME}} ")]
        assert len(rows) == 3
        assert rows[2] == [f"{err[m][name][k]:.2e}" for m in ("chunk", "streams") for k in ("max_abs", "mean_abs")]
    assert "disagrees" not in cap.err
