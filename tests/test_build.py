"""The compiled kernels load, whichever way they were built."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from synthcl_fast.backends.native import CSRC, load_error


def test_extension_loads():
    assert load_error() is None


@pytest.mark.skipif(not CSRC.is_dir(), reason="no csrc/ next to the package (not a source checkout)")
def test_compile_on_first_use(tmp_path):
    """What `pip install -e .` without torch at build time relies on: a one-line message, a compile into
    the cache, the same numbers as the reference; a second process finds the cache and prints nothing."""
    script = textwrap.dedent("""
        import torch, synthcl_fast.losses as L
        z = torch.randn(20, 8, dtype=torch.float64)
        print(float((L.nt_xent(z[:10], z[10:], backend="cpu") - L.nt_xent(z[:10], z[10:], backend="reference")).abs()))
    """)
    env = dict(os.environ, SYNTHCL_FAST_FORCE_JIT="1", SYNTHCL_FAST_CACHE=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert float(run.stdout.strip().splitlines()[-1]) < 1e-12
    assert "synthcl_fast: compiling the CPU kernels" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
    assert any(tmp_path.rglob("synthcl_fast_cpu.so"))


def test_labels_on_another_device_are_rejected():
    features = torch.randn(4, 3)
    with pytest.raises(ValueError, match="anchor_labels is on meta but the features are on cpu"):
        import synthcl_fast.losses as L

        L.contrastive_loss(features, anchor_labels=torch.zeros(4, dtype=torch.long, device="meta"))
