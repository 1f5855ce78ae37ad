"""Which variant of the micro-kernels (simd.py) this process generates.

One emitter, parameterised by the host: the vector width in floats and how many
frames a GEMM call keeps in registers. Chosen once, at import, from the features of
the CPU numba compiles for; LSTM_ENGINE_ISA=auto|avx512|avx2|generic overrides.

  avx512   16-float vectors (32 registers)
  avx2     8-float vectors with FMA (16 registers)
  generic  4-float vectors and no x86 intrinsic: correct code on any LLVM target
           (NEON on ARM), tuned for none

bf16 weights are widened to float32 (a shift or a mask per two columns), not fed to
AVX512_BF16's vdpbf16ps: on the Emerald Rapids this was measured on, vdpbf16ps ran
at a third of vfmadd231ps's rate (0.96 against 0.32 ns an instruction, 12 independent
chains), i.e. 33 against 50 multiply-adds a ns, before the cost of rounding x and h
to bf16 (or of splitting them in two halves to keep their precision).
"""
import os
from dataclasses import dataclass

ENV = "LSTM_ENGINE_ISA"
VARIANTS = ("avx512", "avx2", "generic")


@dataclass(frozen=True)
class Isa:
    name: str  # one of VARIANTS
    width: int  # floats per vector register
    frames: int  # frames one GEMM kernel call feeds from each weight load (register blocking)
    vnni: bool = False  # u8 x s8 dot products of four (vpdpbusd) for int8-dynamic panels

    @property
    def key(self) -> str:
        """Names everything that changes generated code: the JIT cache is kept apart by it."""
        return f"{self.name}-w{self.width}-f{self.frames}" + ("-vnni" if self.vnni else "")


def host_features() -> set:
    """The CPU features numba generates code for (its NUMBA_CPU_NAME/FEATURES, else the host)."""
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_FEATURES:
        return {f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+")}
    if config.CPU_NAME and config.CPU_NAME != "host":
        return set()  # a named portable target: assume nothing beyond the baseline
    return {k for k, v in llvm.get_host_cpu_features().items() if v}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def cache_bytes(level: int, default: int) -> int:
    """Size of cpu0's data (or unified) cache of `level` as the OS reports it (Linux
    sysfs), else `default`: tuning asks the host, never one machine's numbers."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        indexes = sorted(os.listdir(root))
    except OSError:
        return default
    for index in indexes:
        try:
            entry = {k: _read(os.path.join(root, index, k)) for k in ("level", "type", "size")}
            if int(entry["level"]) == level and entry["type"] in ("Data", "Unified"):
                size = entry["size"]
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                return int(size[:-1] if scale > 1 else size) * scale
        except (OSError, ValueError):
            continue  # an unreadable or odd entry: the others may still tell
    return default


def _runnable(name: str, features: set) -> bool:
    if name == "avx512":
        return {"avx512f", "avx512bw", "avx512vl", "fma"} <= features
    if name == "avx2":
        return {"avx2", "fma"} <= features
    return True


def select(request: str, features: set) -> Isa:
    """The variant for `request` (auto or a name) on a CPU with `features`; ValueError
    when the CPU cannot run the one asked for."""
    request = (request or "auto").strip().lower()
    if request != "auto" and request not in VARIANTS:
        raise ValueError(f"{ENV}={request!r}: choose auto or one of {', '.join(VARIANTS)}")
    if request == "auto":
        request = next(n for n in VARIANTS if _runnable(n, features))
    elif not _runnable(request, features):
        raise ValueError(f"{ENV}={request}: this CPU cannot run it (it lacks "
                         f"{'AVX-512 F/BW/VL' if request == 'avx512' else 'AVX2 and FMA'}); "
                         f"use auto")
    if request == "avx512":
        # 32 zmm registers: 4 weight vectors x 6 frames = 24 accumulators
        return Isa("avx512", 16, 6, "avx512vnni" in features)
    if request == "avx2":
        return Isa("avx2", 8, 3, "avxvnni" in features)  # 16 ymm registers: 4 x 3 = 12 accumulators
    return Isa("generic", 4, 3)


ISA = select(os.environ.get(ENV, "auto"), host_features())
