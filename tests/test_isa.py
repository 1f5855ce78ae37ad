"""Kernel variants: chosen from the CPU, overridable, each tested, and never mixed up
by numba's cache. Variants other than this process's run in subprocesses."""
import os
import subprocess
import sys

import numpy as np
import pytest

import lstm_engine
from lstm_engine import kernels
from lstm_engine.kernels import isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = isa.host_features()
RUNNABLE = [v for v in isa.VARIANTS if isa._runnable(v, HOST)]
AVX512 = {"avx512f", "avx512bw", "avx512vl", "fma", "avx2"}


def _env(variant):
    return dict(os.environ, **{isa.ENV: variant})


def test_auto_picks_the_widest_variant_the_cpu_runs():
    assert isa.select("auto", AVX512 | {"avx512bf16"}) == isa.Isa("avx512", 16, 6)
    assert isa.select("auto", AVX512 | {"avx512vnni"}) == isa.Isa("avx512", 16, 6, vnni=True)
    assert isa.select("avx2", AVX512 | {"avxvnni"}).vnni and not isa.select("generic", AVX512 | {"avxvnni"}).vnni
    assert isa.select("auto", {"avx2", "fma"}).name == "avx2"
    assert isa.select("auto", {"avx2"}).name == "generic"  # AVX2 without FMA
    assert isa.select("auto", {"neon"}).name == "generic"
    assert isa.select("", AVX512).name == "avx512"


def test_override_and_its_errors():
    assert isa.select("AVX2", AVX512).name == "avx2"
    assert isa.select("generic", AVX512).name == "generic"
    with pytest.raises(ValueError, match="cannot run it"):
        isa.select("avx512", {"avx2", "fma"})
    with pytest.raises(ValueError, match="choose auto or one of avx512, avx2, generic"):
        isa.select("sse9", AVX512)


def test_kernel_isa_names_this_process_variant():
    assert lstm_engine.kernel_isa() == isa.ISA.name
    assert isa.ISA == isa.select(os.environ.get(isa.ENV, "auto"), HOST)


def test_asking_for_a_variant_the_cpu_lacks_is_a_clear_error():
    missing = [v for v in isa.VARIANTS if v not in RUNNABLE]
    if not missing:
        pytest.skip("this CPU runs every variant")
    r = subprocess.run([sys.executable, "-c", "import lstm_engine"], env=_env(missing[0]),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "cannot run it" in r.stderr


@pytest.mark.parametrize("variant", isa.VARIANTS)
def test_kernels_and_engine_under_every_variant(variant):
    """The panel kernels, the engine against onnxruntime, step_many and the rounded
    precisions, in a process running `variant` (this process covers its own)."""
    if variant not in RUNNABLE:
        pytest.skip(f"this CPU cannot run {variant}")
    if variant == isa.ISA.name:
        pytest.skip("the rest of the suite runs this process's variant")
    files = ["tests/test_simd.py", "tests/test_vs_onnxruntime.py", "tests/test_step_many.py",
             "tests/test_precision.py", "tests/test_paths_agree.py", "tests/test_precision_trained.py"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
                       env=_env(variant), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


_PROBE = """
import sys, numpy as np, lstm_engine
sys.path.insert(0, "tests")
from helpers import make_model
import lstm_engine.reference as ref
m = make_model(np.random.default_rng(1), 24, hidden=(70,))
X = np.random.default_rng(2).standard_normal((9, 24)).astype(np.float32)
s = lstm_engine.Engine(m).open_stream()
Y = np.stack([s.step(x) for x in X])
want, _ = ref.run(m, X.astype(np.float64)[:, None])
print(lstm_engine.kernel_isa(), float(np.abs(Y - want[:, 0]).max()))
"""


def test_the_jit_cache_keeps_variants_apart():
    """Variants pack weights into groups of different sizes, so a kernel loaded from the
    cache of another variant gives wrong numbers. numba keys its cache on source and
    signature only, which an environment variable does not change: alternate variants
    over one cache and check every result."""
    if len(RUNNABLE) < 2:
        pytest.skip("this CPU runs one variant only")
    a, b = RUNNABLE[:2]
    for variant in (a, b, a, b):
        r = subprocess.run([sys.executable, "-c", _PROBE], env=_env(variant), capture_output=True,
                           text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        name, err = r.stdout.split()
        assert name == variant and float(err) < 1e-4, (variant, r.stdout)
    cache = os.path.join(ROOT, "lstm_engine", "kernels", "__pycache__")
    if os.access(cache, os.W_OK):  # in-tree cache: each variant has its own folder
        digest = kernels._FOLDER.rsplit("-", 1)[1]
        folders = {f"{isa.select(v, HOST).key}-{digest}" for v in (a, b)}
        assert folders <= set(os.listdir(cache))


_IR = """
import re, numba, numpy as np
from lstm_engine.kernels import simd
@numba.njit
def f(p, x, out):
    simd.gemm(p, 0, x, 0, 5, 5, out, 0, simd.GROUP, 2)
    simd.gemv4_acc(p, 0, x, 0, 0, 5, out, 0, 0, 1)
for dt in (np.float32, np.uint16, np.int8):
    f(np.zeros(4 * simd.GROUP * 9, dt), np.zeros(10, np.float32), np.zeros(8 * simd.GROUP, np.float32))
ir = "".join(f.inspect_llvm().values())
x86 = [n for n in re.findall(r"@llvm\\.x86\\.[\\w.]+", ir) if ".atomic." not in n]  # numba's refcounts use one
print(simd.WIDTH, len(x86), ir.count("llvm.fmuladd.v%df32" % simd.WIDTH))
"""


def test_generic_variant_calls_no_x86_intrinsic():
    """What ARM gets: the generic variant's IR uses LLVM's target-independent vector
    operations only, 4 floats wide."""
    r = subprocess.run([sys.executable, "-c", _IR], env=_env("generic"), capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    width, x86, fma = map(int, r.stdout.split())
    assert width == 4 and x86 == 0 and fma > 0


def test_cache_sizes_come_from_the_host():
    assert isa.cache_bytes(99, 123) == 123  # no such level: the default
    if os.path.isdir("/sys/devices/system/cpu/cpu0/cache"):
        assert isa.cache_bytes(1, 0) >= 4096 and isa.cache_bytes(2, 0) >= isa.cache_bytes(1, 0)
