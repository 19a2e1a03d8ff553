"""The Triton backend in the normal test session: the interpreter lane, and backend selection.

The interpreter lane is the conformance suite (tests/test_conformance.py, tests/test_frozen_side.py) and the
Triton internals (tests/triton_internals.py) with TRITON_INTERPRET=1 and the triton backend on CPU tensors.
TRITON_INTERPRET must be set before the kernels are imported (triton.jit reads it then), and must not leak into
the other test files of this session, so the lane runs in a subprocess. On a GPU machine the conformance suite runs
the triton lane on CUDA in this session directly (marker gpu).
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast.backends import AUTO_ORDER, BackendUnavailableError, available_backends, resolve_backend
from synthcl_fast.backends import triton_support

ROOT = Path(__file__).resolve().parents[1]
LANE = ["tests/test_conformance.py", "tests/test_frozen_side.py", "tests/triton_internals.py"]
MIN_CASES = 300  # the interpreter lane must really have run the kernel tests, not skipped them
TRITON_MISSING = triton_support.triton_import_error()
# A parametrization with no case in the interpreter session (CUDA-only tests) is reported as one skip.
EXPECTED_SKIP = "got empty parameter set"


def _run_lane(tmp_path, targets, select: str | None = None, min_tests: int = MIN_CASES):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TRITON_INTERPRET="1")
    env.pop("SYNTHCL_FAST_TRITON_TILES", None)
    report = tmp_path / "lane.xml"
    command = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += ["-k", select] if select else []
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    unexpected_skips = [case.get("name") for case in suite.iter("testcase")
                        if any(EXPECTED_SKIP not in (skip.get("message") or "") for skip in case.iter("skipped"))]
    assert counts["failures"] == counts["errors"] == 0 and not unexpected_skips, (counts, unexpected_skips)
    assert counts["tests"] - counts["skipped"] >= min_tests, counts


@pytest.mark.skipif(TRITON_MISSING is not None, reason=f"{TRITON_MISSING}")
def test_version_regressions_under_the_interpreter(tmp_path):
    """tests/triton_regressions.py: what broke with one triton release (first: a wrong triton fails fast)."""
    _run_lane(tmp_path, ["tests/triton_regressions.py"], min_tests=2)


@pytest.mark.skipif(TRITON_MISSING is not None, reason=f"{TRITON_MISSING}")
def test_conformance_under_the_interpreter(tmp_path):
    """The whole conformance suite and the Triton internals on CPU tensors with TRITON_INTERPRET=1."""
    _run_lane(tmp_path, LANE)


@pytest.mark.skipif(TRITON_MISSING is not None, reason=f"{TRITON_MISSING}")
def test_property_suite_under_the_interpreter(tmp_path):
    """tests/test_properties.py (hypothesis: 200 drawn problems per op in CI) for the Triton backend, on CPU
    tensors with TRITON_INTERPRET=1, against the same float64 reference and declared tolerances."""
    _run_lane(tmp_path, ["tests/test_properties.py"], select="triton", min_tests=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or TRITON_MISSING is not None, reason="needs a CUDA GPU and triton")
def test_triton_internals_on_the_gpu(tmp_path):
    """The internals file on CUDA (the conformance suite runs the GPU lane in this session)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/triton_internals.py", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-20000:]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this session runs the interpreter")
def test_cpu_tensors_need_the_interpreter():
    reason = available_backends("cpu")["triton"]
    assert reason is not None and "TRITON_INTERPRET" in reason
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run"):
        L.nt_xent(torch.randn(4, 3), torch.randn(4, 3), backend="triton")
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name != "triton"


def test_auto_prefers_triton_on_cuda():
    assert AUTO_ORDER["cuda"][0] == "triton"
    if torch.cuda.is_available() and TRITON_MISSING is None:
        assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16).name == "triton"


def test_missing_triton_is_a_clear_reason(monkeypatch):
    monkeypatch.setattr(triton_support, "_IMPORT_ERROR", ["triton is not importable (ImportError: test)"])
    for device in ("cpu", "cuda"):
        assert "triton is not importable" in triton_support.unavailable_reason(torch.device(device), torch.float32)
    with pytest.raises(BackendUnavailableError, match="triton is not importable"):
        resolve_backend("triton", torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("triton_version,numpy_version,conflict", [
    ("3.6.0", "2.4.6", True), ("3.1.0", "2.4.0rc1", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.5.5", False),
    ("3.9.0+git1234", "2.10.0", False),
])
def test_interpreter_numpy_conflict(triton_version, numpy_version, conflict):
    """triton < 3.7's interpreter with numpy >= 2.4 fails in every kernel with a loop (seen: triton 3.6.0 with
    numpy 2.4.6 and 2.5.5; 2.3.5 only warns): a clear reason instead."""
    reason = triton_support.interpreter_numpy_conflict(triton_version, numpy_version)
    assert (reason is not None) is conflict
    if conflict:
        assert f"triton {triton_version}" in reason and "numpy < 2.4" in reason


@pytest.mark.parametrize("version,old", [("3.1.0", True), ("3.5.1", True), ("3.6.0", False), ("3.9.0+git1", False)])
def test_too_old_triton_is_a_clear_reason(version, old):
    reason = triton_support.too_old(version)
    assert (reason is not None) is old
    if old:
        assert f"triton {version} is older than {triton_support.MIN_TRITON}" in reason


def test_min_triton_is_the_declared_bound():
    """MIN_TRITON is pyproject.toml's bound on the `triton` extra (the one place users read it)."""
    import re

    assert re.search(r'"triton>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1) == \
        triton_support.MIN_TRITON


def test_unsupported_dtype_and_device():
    if TRITON_MISSING is not None:
        pytest.skip(TRITON_MISSING)
    assert "float16, bfloat16, float32 or float64" in triton_support.unavailable_reason(torch.device("cuda"),
                                                                                         torch.int32)
    assert "CUDA tensors" in triton_support.unavailable_reason(torch.device("meta"), torch.float32)


@pytest.mark.parametrize("text,message", [
    ("block_m=15", "power of two"),
    ("block_m=8", "power of two >= 16"),
    ("splits=0", "positive int"),
    ("block_q=16", "keys"),
    ("block_m", "key=positive int"),
])
def test_tile_override_errors(monkeypatch, text, message):
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", text)
    with pytest.raises(ValueError, match=message):
        triton_support.tile_overrides()


def test_tile_override_parsing(monkeypatch):
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", " block_m=32, splits=3 ,num_warps=4")
    assert triton_support.tile_overrides() == {"block_m": 32, "splits": 3, "num_warps": 4}
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_FP32_PRECISION", "fast")
    with pytest.raises(ValueError, match="SYNTHCL_FAST_TRITON_FP32_PRECISION"):
        triton_support.fp32_precision()


def test_expsum_dtype_setting(monkeypatch):
    """The measurement knob of the forward's sum of exponentials: float64 unless set, and only its two values."""
    monkeypatch.delenv("SYNTHCL_FAST_TRITON_EXPSUM", raising=False)
    assert triton_support.expsum_dtype() == "float64"
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_EXPSUM", "float32")
    assert triton_support.expsum_dtype() == "float32"
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_EXPSUM", "float16")
    with pytest.raises(ValueError, match="SYNTHCL_FAST_TRITON_EXPSUM"):
        triton_support.expsum_dtype()


def test_split_float_is_exact_to_float64_tolerance():
    for value in (1e-12, 1.0 / 3, 1.0 / 65536, 0.1):
        hi, lo = triton_support.split_float(value)
        assert torch.tensor(hi, dtype=torch.float32).item() == hi and torch.tensor(lo, dtype=torch.float32).item() == lo
        assert abs((hi + lo) - value) <= 1e-14 * value
