"""Run Python code in a fresh interpreter on this checkout: for what only a new
process shows (first compilation of kernels, unpickling elsewhere)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, stdin: bytes = b"", timeout: float = 300) -> bytes:
    """stdout of `python -c code` run from the repository root, with tests/ importable;
    fails the calling test with the child's stderr when it exits non-zero."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    res = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, check=False,
                         timeout=timeout, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout
