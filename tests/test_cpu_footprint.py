"""The first CPU call pays for the CPU kernels only: no triton, no torch.compile machinery.

`torch.compiler.assume_constant_result` imports torch._dynamo, which imports sympy and triton: ~150 MB of
resident memory that a CPU user never needs (measured: triton 75 MB, sympy 33 MB, dynamo itself 40 MB).
Measured here without them: about 10 MB from `import synthcl_fast.losses` through a first fused forward and
backward, nearly all of it torch's own first-op cost (its thread pool and autograd engine).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

GPU_MACHINERY = ("triton", "torch._dynamo", "torch._inductor", "sympy")
MAX_RSS_INCREASE_MB = 50  # the modules above are ~150 MB together; triton alone is ~75 MB

SCRIPT = textwrap.dedent(f"""
    import json, sys
    import torch

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    before = rss_mb()
    import synthcl_fast
    import synthcl_fast.losses as L
    z = torch.randn(16, 8, requires_grad=True)
    L.nt_xent(z[:8], z[8:], temperature=0.5, backend="cpu").backward()
    L.nt_xent(z[:8], z[8:], temperature=0.5).backward()  # backend="auto" resolves to "cpu" here
    L.positive_pair_loss(z[:8], z[8:].detach(), 0.5, backend="cpu").backward()
    print(json.dumps({{"rss_increase_mb": rss_mb() - before,
                      "imported": [m for m in {GPU_MACHINERY!r} if m in sys.modules]}}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc (Linux)")
def test_first_cpu_call_imports_no_gpu_machinery():
    env = {k: v for k, v in os.environ.items() if k not in ("SYNTHCL_FAST_BACKEND", "TRITON_INTERPRET")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == [], f"a CPU call imported {result['imported']}"
    assert result["rss_increase_mb"] < MAX_RSS_INCREASE_MB, result
