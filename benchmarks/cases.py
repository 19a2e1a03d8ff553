"""The benchmark cases, their inputs, and every implementation timed on them: one module for the CPU suite
(test_cpu_bench.py), the GPU suite (test_gpu_bench.py) and the GPU sweep (gpu_sweep.py).

A case is one loss at one shape (`Case`); an implementation is one way a user could compute it:

    reference   synthcl_fast.reference: plain PyTorch, materializes the R x K logits (the ground truth)
    compiled    torch.compile(reference, dynamic=True)
    cpu, triton, cuda
                synthcl_fast's fused backends (each where it runs: cpu on CPU tensors, triton and cuda on GPUs)
    lightly     lightly.loss.NTXentLoss (NT-Xent; InfoNCE through its memory bank)
    pml         pytorch_metric_learning.losses.NTXentLoss / SupConLoss
    solo        solo-learn's simclr_loss_func
    open_clip   open_clip.loss.ClipLoss (on normalized features, as open_clip's models return them)
    inf_cl      Inf-CL's cal_flash_loss (GPU only; one direction per call, both for the symmetric CLIP loss)

Every step is forward + backward of one loss (the loss, then torch.autograd.grad for every input that
requires grad), timed with the device synchronized at its end (`synchronized`), so that pytest-benchmark's
wall-clock timer (and the sweep's, which is the same perf_counter) sees the work and not only the launches.

Where an implementation would hold more R x K buffers than the memory budget allows (`memory_estimate_bytes`,
`memory_budget_bytes`), it is not run and the reason is recorded; an out-of-memory error during a run is
recorded the same way (`is_out_of_memory`). Each row of the results names the case, the implementation, the
machine and versions, and goes to one long CSV (`append_rows`, RESULTS_CSV).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "benchmarks" / "results" / "benchmarks.csv"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

TEMPERATURE = {"nt_xent": 0.1, "nt_xent_negatives": 0.1, "supcon": 0.1, "ppcl": 0.1, "info_nce": 0.07, "dcl": 0.1,
               "dclw": 0.1, "per_positive": 0.1, "hcl": 0.5}
HCL_BETA, HCL_TAU_PLUS = 1.0, 0.1  # Robinson et al.'s CIFAR-10 setting (t = 0.5)
DCLW_SIGMA = 0.5  # Yeh et al.'s (and lightly's DCLWLoss default)
CLIP_LOGIT_SCALE = 1 / 0.07
PAIR_TARGET = 0.5
SUPCON_CLASSES = 10
INFO_NCE_QUEUE = 65536

FUSED = ("cpu", "triton", "cuda")
PEERS = ("lightly", "pml", "solo", "open_clip", "inf_cl")
LABELS = {
    "reference": "reference (PyTorch)", "compiled": "torch.compile(reference)",
    "cpu": "synthcl_fast cpu", "triton": "synthcl_fast triton", "cuda": "synthcl_fast cuda",
    "lightly": "lightly NTXentLoss", "pml": "pytorch-metric-learning", "solo": "solo-learn simclr_loss_func",
    "open_clip": "open_clip ClipLoss", "inf_cl": "Inf-CL",
}
# Which implementations compute each loss (fused backends are added per device by `implementations`).
FAMILY_IMPLEMENTATIONS = {
    "nt_xent": ("reference", "compiled", "lightly", "pml", "solo"),
    "nt_xent_negatives": ("reference", "compiled", "pml"),
    "supcon": ("reference", "compiled", "pml"),
    "ppcl": ("reference", "compiled", "pml"),
    "info_nce": ("reference", "compiled", "lightly", "pml", "inf_cl"),
    "clip": ("reference", "compiled", "open_clip", "inf_cl"),
    "positive_pair": ("reference", "compiled"),
    "dcl": ("reference", "compiled", "lightly"),
    "dclw": ("reference", "compiled"),
    "per_positive": ("reference", "compiled"),
    "hcl": ("reference", "compiled"),
}
# R x K fp32 buffers each materializing implementation holds at its peak during forward + backward, measured
# with synthcl_fast.benchmarking.peak_memory_bytes at R = 1024 on the CPU and rounded up (every run's measured
# peak is kept in the results CSV: peak_mb against R K 4 bytes checks them). They decide which runs are
# skipped for memory; 0: memory O((R + K) D).
LOGIT_COPIES = {"reference": 6, "compiled": 4, "lightly": 5, "pml": 12, "solo": 8, "open_clip": 7, "inf_cl": 0,
                "cpu": 0, "triton": 0, "cuda": 0}
# pytorch-metric-learning's NTXentLoss weighs every (positive pair, negative pair) couple: a P x (negative
# pairs) fp32 matrix, P = R positive pairs, so memory and time grow as R^3 (measured: 4.25-4.5 such buffers,
# 272 MiB at R = 256 and 17 GiB at R = 1024, where one call takes over a minute on 2 cores).
PML_NTXENT_COPIES = 5
# Families whose reference holds more R x K buffers than LOGIT_COPIES says: per_positive's reference
# (contrastive_loss_variant, a softplus per positive pair) measured 9.45 at R = 1024; compiled is taken as the
# same (not measured: torch.compile is left out of the estimate test).
FAMILY_LOGIT_COPIES = {("per_positive", "reference"): 10, ("per_positive", "compiled"): 10}
MEMORY_FRACTION = 0.7  # of the device's memory (CPU: RAM) that the estimated buffers may take


@dataclass(frozen=True)
class Case:
    """One loss at one shape. rows = R anchors: the batch size on the plots' x axis.

    nt_xent            R = 2N rows (two views of N images), K = R
    nt_xent_negatives  R = 2N rows + M = N/4 generated negatives (the trainer's ratio): K = R + R/8
    supcon             R rows in SUPCON_CLASSES classes, K = R
    ppcl               R = 2N real views + 4M synthetic views with M = N/4 (the trainer's ratio): N = R/3
    info_nce           R queries, K = R keys + `queue` negatives
    clip               B = R image-text pairs, symmetric (both directions)
    positive_pair      R pairs of rows (memory-bound: no R x K work)
    dcl                NT-Xent's rows with the positive out of the denominator (DCL), K = R
    dclw               DCL with DCLW's per-row positive weights (positive_weight; sigma = DCLW_SIGMA), K = R
    per_positive       SupCon's rows with denominator="per_positive" (each positive against the negatives), K = R
    hcl                NT-Xent's rows with HCL's hard, debiased negatives (beta = 1, tau_plus = 0.1), K = R
    """

    family: str
    rows: int
    dim: int = 128
    dtype: str = "float32"
    queue: int = 0

    def __post_init__(self):
        if self.family not in FAMILY_IMPLEMENTATIONS:
            raise ValueError(f"unknown case family {self.family!r}; one of {sorted(FAMILY_IMPLEMENTATIONS)}")
        multiple = {"nt_xent": 2, "nt_xent_negatives": 8, "ppcl": 12, "dcl": 2, "dclw": 2, "hcl": 2}.get(self.family, 1)
        if self.rows % multiple:
            raise ValueError(f"{self.family}: rows must be a multiple of {multiple}, got {self.rows}")

    @property
    def cols(self) -> int:
        """K: candidates per anchor row (positive_pair: 1, its partner)."""
        if self.family == "nt_xent_negatives":
            return self.rows + self.rows // 8
        if self.family == "info_nce":
            return self.rows + self.queue
        return 1 if self.family == "positive_pair" else self.rows

    @property
    def name(self) -> str:
        shape = {"clip": f"B={self.rows}", "positive_pair": f"R={self.rows}"}.get(
            self.family, f"R=K={self.rows}" if self.cols == self.rows else f"R={self.rows} K={self.cols}")
        return f"{self.family} {shape} D={self.dim} {self.dtype}"

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")

    @property
    def flops_step(self) -> float:
        """Flops of an ideal fused forward + backward (DESIGN.md: 8RKD; the symmetric CLIP loss gets both
        directions from one set of products, so 8RKD too). positive_pair: 0 (see bytes_step)."""
        return 0.0 if self.family == "positive_pair" else 8.0 * self.rows * self.cols * self.dim

    @property
    def bytes_step(self) -> int:
        """positive_pair: the bytes a fused forward + backward must move (read a and b, write a's gradient)."""
        element = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        return 3 * self.rows * self.dim * element if self.family == "positive_pair" else 0


SWEEPS = ("smoke", "default", "full")


def cases(device_type: str = "cpu", sweep: str = "default") -> list[Case]:
    """The suites' cases. CPU "default": what runs in under 15 minutes on a 2-core machine with every peer and
    torch.compile; "full" (--full-sweep): NT-Xent from 512 to 65536 rows (the fused kernels alone where the
    peers' buffers do not fit), every other loss at three sizes; "smoke": tiny shapes that walk every code
    path in a minute (numbers meaningless). GPU: the full list in bfloat16 (smoke: the tiny one)."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
    dtype = "float32"
    if device_type == "cuda":
        dtype, sweep = "bfloat16", "full" if sweep == "default" else sweep
    if sweep == "smoke":
        return [Case("nt_xent", 64, 32), Case("nt_xent", 128, 32), Case("nt_xent_negatives", 64, 32),
                Case("supcon", 64, 32), Case("ppcl", 96, 32), Case("info_nce", 16, 32, queue=256),
                Case("clip", 32, 32), Case("positive_pair", 256, 32), Case("dcl", 64, 32), Case("dclw", 64, 32),
                Case("per_positive", 64, 32), Case("hcl", 64, 32)]
    full = sweep == "full"
    nt_xent = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] if full else [512, 2048, 8192]
    sizes = {
        "nt_xent_negatives": [512, 2048, 8192] if full else [2048],
        "supcon": [512, 2048, 8192] if full else [2048],
        "ppcl": [768, 3072, 12288] if full else [3072],
        "info_nce": [64, 256, 1024] if full else [256],
        "clip": [1024, 4096, 16384] if full else [4096],
        "positive_pair": [4096, 65536, 1 << 20] if full else [65536],
        "dcl": [512, 2048, 8192] if full else [2048],
        "dclw": [512, 2048, 8192] if full else [2048],
        "per_positive": [512, 2048, 8192] if full else [2048],
        "hcl": [512, 2048, 8192] if full else [2048],
    }
    out = [Case("nt_xent", n, 128, dtype) for n in nt_xent]
    for family, family_sizes in sizes.items():
        dim = 512 if family == "clip" else 128
        queue = INFO_NCE_QUEUE if family == "info_nce" else 0
        out += [Case(family, n, dim, dtype, queue) for n in family_sizes]
    return out


def implementations(case: Case, device_type: str) -> list[str]:
    """Every implementation of the case's loss that belongs on `device_type` (whether it can run there
    now, with the libraries installed and the memory it needs, is `unavailable_reason`'s question)."""
    fused = ["cpu"] if device_type == "cpu" else ["triton", "cuda"]
    return fused + [name for name in FAMILY_IMPLEMENTATIONS[case.family]
                    if not (name == "inf_cl" and device_type != "cuda")]


# ------------------------------------------------------------------------------------------- availability

def memory_estimate_bytes(case: Case, implementation: str) -> int:
    """The buffers the implementation holds at its peak (LOGIT_COPIES x R x K fp32; pml's NTXentLoss: its
    positive-pair x negative-pair matrix), in bytes."""
    if implementation == "pml" and case.family in ("nt_xent", "nt_xent_negatives", "info_nce"):
        # P = R positive pairs times the negative pairs between its anchors (generated rows are anchors
        # too there: K of them) and the candidates
        anchors = case.cols if case.family == "nt_xent_negatives" else case.rows
        return int(PML_NTXENT_COPIES * case.rows * anchors * case.cols * 4)
    copies = FAMILY_LOGIT_COPIES.get((case.family, implementation), LOGIT_COPIES[implementation])
    return copies * case.rows * case.cols * 4


def memory_budget_bytes(device: torch.device | str) -> int:
    """What the estimated buffers may take: SYNTHCL_BENCH_MEMORY_GIB, else MEMORY_FRACTION of the device's
    memory (the machine's RAM for the CPU)."""
    from synthcl_fast.benchmarking import total_memory_bytes

    if os.environ.get("SYNTHCL_BENCH_MEMORY_GIB"):
        return int(float(os.environ["SYNTHCL_BENCH_MEMORY_GIB"]) * 2**30)
    return int(MEMORY_FRACTION * total_memory_bytes(device))


def unavailable_reason(case: Case, implementation: str, device: torch.device,
                       budget_bytes: int | None = None) -> str | None:
    """None when the implementation can run the case on `device`, else why not (recorded with the results).
    budget_bytes: the memory budget (default: memory_budget_bytes(device))."""
    if implementation in FUSED:
        from synthcl_fast.backends import BACKENDS

        reason = BACKENDS[implementation].unavailable_reason(device, DTYPES[case.dtype])
        if reason is not None:
            return f"backend {implementation!r} unavailable: {reason}"
        from synthcl_fast.variants import FUSED_OPTIONS

        missing = set(FAMILY_VARIANT_OPTIONS.get(case.family, ())) - FUSED_OPTIONS.get(implementation, set())
        if missing:
            return f"backend {implementation!r} does not fuse {', '.join(sorted(missing))}"
    elif implementation in PEERS:
        module = {"lightly": "lightly", "pml": "pytorch_metric_learning", "solo": "solo", "open_clip": "open_clip",
                  "inf_cl": "inf_cl"}[implementation]
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
        if implementation == "inf_cl" and torch.device(device).type != "cuda":
            return "Inf-CL runs on CUDA tensors only"
        if implementation == "inf_cl" and inf_cl_head_dim(case.dim) is None:
            return f"Inf-CL needs D divisible by a head size of 16..256, got {case.dim}"
    needed = memory_estimate_bytes(case, implementation)
    budget = memory_budget_bytes(device) if budget_bytes is None else budget_bytes
    if needed > budget:
        return f"out of memory (estimated): needs ~{needed / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory errors on either device (the CPU allocator raises a plain RuntimeError)."""
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (  # torch.OutOfMemoryError: 2.5+
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error)))


@contextlib.contextmanager
def cpu_memory_guard(device: torch.device | str, budget_bytes: int):
    """While a CPU measurement runs, caps this process's address space at what it maps now plus the budget:
    an estimate that was wrong then fails an allocation (recorded as out of memory) instead of waking the
    kernel's OOM killer, which may pick another process on a shared machine. Not around GPU work (CUDA maps
    large address ranges) and not where /proc is missing."""
    if torch.device(device).type != "cpu" or torch.cuda.is_initialized() or not os.path.exists("/proc/self/status"):
        yield
        return
    import resource

    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + budget_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def inf_cl_head_dim(dim: int) -> int | None:
    """Inf-CL splits D into heads of 16..256 features and needs D divisible by the head size."""
    for head in (256, 128, 64, 32, 16):
        if dim % head == 0:
            return head
    return None


# ----------------------------------------------------------------------------------------------- inputs

def make_inputs(case: Case, device: torch.device | str, seed: int = 0) -> dict:
    """One set of inputs: the feature tensors (leaves; those a training step differentiates require grad)
    and the integer labels a loss needs, on `device`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]

    def randn(*shape, grad=True):
        x = torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
        return x.requires_grad_(grad)

    n, dim = case.rows, case.dim
    if case.family in ("nt_xent", "dcl", "dclw", "hcl"):
        return {"z1": randn(n // 2, dim), "z2": randn(n // 2, dim)}
    if case.family == "nt_xent_negatives":  # generated rows come from G: they carry gradient
        return {"z1": randn(n // 2, dim), "z2": randn(n // 2, dim), "negatives": randn(n // 8, dim)}
    if case.family in ("supcon", "per_positive"):
        return {"features": randn(n, dim),
                "labels": torch.randint(0, SUPCON_CLASSES, (n,), generator=generator, device=device)}
    if case.family == "ppcl":
        return {"real": randn(2, n // 3, dim), "synthetic": randn(4, n // 12, dim)}
    if case.family == "info_nce":
        return {"query": randn(n, dim), "key": randn(n, dim), "queue": randn(case.queue, dim, grad=False)}
    if case.family == "clip":
        return {"image": randn(n, dim), "text": randn(n, dim),
                "logit_scale": torch.tensor(CLIP_LOGIT_SCALE, device=device, requires_grad=True)}
    return {"a": randn(n, dim), "b": randn(n, dim, grad=False)}


def leaves(inputs: dict) -> list[torch.Tensor]:
    return [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]


# ----------------------------------------------------------------------------------------------- losses

def make_loss(case: Case, implementation: str, device: torch.device | str = "cpu"):
    """fn(inputs) -> scalar loss of the case computed by `implementation`. Every implementation computes
    the same loss as synthcl_fast.reference (tests/test_benchmark_cases.py checks it), except lightly's
    InfoNCE: MoCo's definition through lightly's memory bank (its own random bank, the keys enqueued each
    call; no in-batch keys as negatives), the same amount of work."""
    family = case.family
    if implementation in ("reference", "compiled") + FUSED:
        return _synthcl_loss(case, implementation)
    if implementation == "inf_cl":
        return _inf_cl_loss(case)
    if implementation == "open_clip":
        import torch.nn.functional as F
        from open_clip.loss import ClipLoss

        loss = ClipLoss()
        return lambda x: loss(F.normalize(x["image"], dim=-1), F.normalize(x["text"], dim=-1), x["logit_scale"])
    t = TEMPERATURE[family]
    if implementation == "lightly" and family == "dcl":
        from lightly.loss import DCLLoss

        loss = DCLLoss(temperature=t)
        return lambda x: loss(x["z1"], x["z2"])
    if implementation == "lightly":
        from lightly.loss import NTXentLoss

        if family == "info_nce":
            loss = NTXentLoss(temperature=t, memory_bank_size=(case.queue, case.dim)).to(device)
            return lambda x: loss(x["query"], x["key"])
        loss = NTXentLoss(temperature=t)
        return lambda x: loss(x["z1"], x["z2"])
    if implementation == "solo":
        simclr_loss_func = solo_simclr_loss_func()
        return lambda x: simclr_loss_func(x["z1"], x["z2"], temperature=t)
    if implementation == "pml":
        from pytorch_metric_learning.losses import NTXentLoss, SupConLoss

        if family in ("nt_xent", "nt_xent_negatives"):
            # generated rows get labels of their own: never a positive, anchors without a positive add nothing
            loss = NTXentLoss(temperature=t)

            def pml_nt_xent(x):
                n = x["z1"].shape[0]
                rows = [x["z1"], x["z2"]] + ([x["negatives"]] if "negatives" in x else [])
                embeddings = torch.cat(rows)
                ids = torch.arange(n, device=embeddings.device)
                labels = torch.cat([ids, ids, torch.arange(n, embeddings.shape[0] - n, device=embeddings.device)])
                return loss(embeddings, labels)

            return pml_nt_xent
        if family == "info_nce":
            loss = NTXentLoss(temperature=t)

            def pml_info_nce(x):
                q = x["query"]
                ids = torch.arange(q.shape[0], device=q.device)
                ref_labels = torch.cat([ids, torch.full((x["queue"].shape[0],), -1, device=q.device)])
                return loss(q, ids, ref_emb=torch.cat([x["key"], x["queue"]]), ref_labels=ref_labels)

            return pml_info_nce
        loss = SupConLoss(temperature=t)
        if family == "supcon":
            return lambda x: loss(x["features"], x["labels"])
        if family == "ppcl":
            from synthcl_fast.reference import ppcl_labels

            def pml_ppcl(x):
                real, synthetic = x["real"], x["synthetic"]
                features = torch.cat([real.reshape(-1, case.dim), synthetic.reshape(-1, case.dim)])
                return loss(features, ppcl_labels(real.shape[1], synthetic.shape[1], device=features.device))

            return pml_ppcl
    raise ValueError(f"{implementation!r} does not implement {family!r}")


LOSS_FUNCTIONS = {"nt_xent": "nt_xent", "nt_xent_negatives": "nt_xent", "supcon": "supcon", "ppcl": "ppcl",
                  "info_nce": "info_nce", "clip": "clip_loss", "positive_pair": "positive_pair_loss", "dcl": "dcl",
                  "dclw": "dcl", "per_positive": "contrastive_loss", "hcl": "nt_xent"}
# the variant options (synthcl_fast.variants.FUSED_OPTIONS names) each variant case uses
FAMILY_VARIANT_OPTIONS = {"dcl": ("denominator='negatives'",), "dclw": ("denominator='negatives'", "positive_weight"),
                          "per_positive": ("denominator='per_positive'",), "hcl": ("beta", "tau_plus")}
# the reference's textbook forms of the variants (written independently of the general op; per_positive has
# none: the reference's general variant op)
REFERENCE_FUNCTIONS = {"dcl": "dcl", "dclw": "dcl", "per_positive": "contrastive_loss_variant",
                       "hcl": "hard_negative_nt_xent"}


def _synthcl_loss(case: Case, implementation: str):
    """synthcl_fast.losses with backend=`implementation`, or synthcl_fast.reference (compiled or not)."""
    import synthcl_fast.losses as L
    from synthcl_fast import reference as ref

    family = case.family
    if implementation in FUSED:
        fn, kw = getattr(L, LOSS_FUNCTIONS[family]), {"backend": implementation}
    else:
        fn, kw = getattr(ref, REFERENCE_FUNCTIONS.get(family, LOSS_FUNCTIONS[family])), {}
    if implementation == "compiled":
        fn = _compiled(fn)
    t = TEMPERATURE.get(family)
    if family in ("nt_xent", "dcl"):
        return lambda x: fn(x["z1"], x["z2"], temperature=t, **kw)
    if family == "hcl":
        return lambda x: fn(x["z1"], x["z2"], temperature=t, beta=HCL_BETA, tau_plus=HCL_TAU_PLUS, **kw)
    if family == "dclw" and implementation in FUSED:
        return lambda x: fn(x["z1"], x["z2"], temperature=t, sigma=DCLW_SIGMA, **kw)
    if family == "dclw":  # the reference: the weights by hand, the same for both views of an image
        weights = ref.von_mises_fisher_weights
        return lambda x: fn(x["z1"], x["z2"], temperature=t,
                            positive_weight=weights(x["z1"], x["z2"], DCLW_SIGMA).repeat(2))
    if family == "per_positive":
        return lambda x: fn(x["features"], anchor_labels=x["labels"], temperature=t, denominator="per_positive",
                            **kw)
    if family == "nt_xent_negatives":
        return lambda x: fn(x["z1"], x["z2"], temperature=t, negatives=x["negatives"], **kw)
    if family == "supcon":
        return lambda x: fn(x["features"], x["labels"], temperature=t, **kw)
    if family == "ppcl":
        return lambda x: fn(x["real"], x["synthetic"], temperature=t, **kw)
    if family == "info_nce":
        return lambda x: fn(x["query"], x["key"], negatives=x["queue"], temperature=t, **kw)
    if family == "clip":
        return lambda x: fn(x["image"], x["text"], logit_scale=x["logit_scale"], **kw)
    return lambda x: fn(x["a"], x["b"], PAIR_TARGET, **kw)


_COMPILED: dict = {}


def _compiled(fn):
    """One torch.compile per reference function, with dynamic shapes: one compilation serves every size."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def inf_cl_one_direction(case: Case):
    """fn(q, k, scale) -> Inf-CL's loss of q_i classifying k_i among all k (fp32 inside, as Inf-CL computes)."""
    import torch.nn.functional as F
    from inf_cl import cal_flash_loss

    head_dim = inf_cl_head_dim(case.dim)

    def one_direction(q, k, scale):
        labels = torch.arange(q.shape[0], device=q.device)
        return cal_flash_loss(F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1), labels=labels,
                              scale=scale, head_dim=head_dim).mean()

    return one_direction


def _inf_cl_loss(case: Case):
    one_direction = inf_cl_one_direction(case)
    if case.family == "info_nce":
        return lambda x: one_direction(x["query"], torch.cat([x["key"], x["queue"]]), 1 / TEMPERATURE["info_nce"])
    return lambda x: (one_direction(x["image"], x["text"], x["logit_scale"])
                      + one_direction(x["text"], x["image"], x["logit_scale"])) / 2


def solo_simclr_loss_func():
    """solo-learn's simclr_loss_func, loaded from its file: solo-learn 1.0.2's package __init__ imports its
    whole training stack (and pins torch 1.9), its loss file imports only torch."""
    spec = importlib.util.find_spec("solo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("solo-learn is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "losses" / "simclr.py"
    module_spec = importlib.util.spec_from_file_location("solo_losses_simclr", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.simclr_loss_func


# ------------------------------------------------------------------------------------- steps and timing

def synchronized(fn, device: torch.device | str):
    """fn followed by a device synchronization on a GPU: a wall-clock timer then sees the kernels' time."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize(device)
        return out

    return call


def make_step(case: Case, implementation: str, device: torch.device | str, n_inputs: int = 1):
    """step() -> the loss (detached): one forward + backward (synchronized), inputs rotated over n_inputs sets
    (on a GPU, 3 sets keep one call's inputs out of the L2 cache of the next)."""
    inputs = [make_inputs(case, device, seed) for seed in range(n_inputs)]
    loss_fn = make_loss(case, implementation, device)
    position = [0]

    def step():
        x = inputs[position[0] % n_inputs]
        position[0] += 1
        loss = loss_fn(x)
        torch.autograd.grad(loss, leaves(x))
        return loss.detach()

    return synchronized(step, device)


def time_calls(fn, rounds: int) -> list[float]:
    """Seconds of each of `rounds` calls of fn (synchronized, see `synchronized`) on time.perf_counter, the
    clock pytest-benchmark's timer reads: the GPU sweep times with the same clock and protocol as the suites."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rounds_for(seconds_per_call: float, target_s: float, min_rounds: int = 3, max_rounds: int = 50) -> int:
    """Timed rounds so that one measurement takes about target_s."""
    return max(min_rounds, min(max_rounds, math.ceil(target_s / max(seconds_per_call, 1e-9))))


def percentiles_ms(seconds: list[float]) -> dict:
    """median, p20 and p80 of per-call times, in ms."""
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) == 1:
        return {"median_ms": ms[0], "p20_ms": ms[0], "p80_ms": ms[0]}
    cuts = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median_ms": statistics.median(ms), "p20_ms": cuts[1], "p80_ms": cuts[7]}


# ---------------------------------------------------------------------------------------------- results

CSV_FIELDS = ("run_id", "date_utc", "suite", "device", "cpu", "cpu_count", "torch_threads", "load_1m", "gpu", "commit",
              "torch", "triton", "cuda", "python", "case", "family", "implementation", "rows", "cols", "dim", "dtype",
              "pass", "status", "rounds", "median_ms", "p20_ms", "p80_ms", "peak_mb", "loss", "tflops", "gb_per_s")


def result_row(env: dict, run_id: str, suite: str, device: torch.device | str, case: Case, implementation: str,
               status: str = "ok", timing: dict | None = None, peak_bytes: int | None = None, rounds: int | None = None,
               loss: float | None = None, step_pass: str = "fwd+bwd") -> dict:
    """One row of the long results CSV."""
    row = {key: env.get(key) for key in ("date_utc", "cpu", "cpu_count", "torch_threads", "load_1m", "gpu", "commit",
                                          "torch", "triton", "cuda", "python")}
    row.update(run_id=run_id, suite=suite, device=torch.device(device).type, case=case.name, family=case.family,
               implementation=implementation, rows=case.rows, cols=case.cols, dim=case.dim, dtype=case.dtype,
               status=status, rounds=rounds, loss=loss, peak_mb=None if peak_bytes is None else peak_bytes / 2**20,
               **{"pass": step_pass})
    if timing:
        row.update(timing)
        seconds = timing["median_ms"] * 1e-3
        if case.flops_step and step_pass == "fwd+bwd":
            row["tflops"] = case.flops_step / seconds / 1e12
        if case.bytes_step and step_pass == "fwd+bwd":
            row["gb_per_s"] = case.bytes_step / seconds / 1e9
    return row


def new_run_id(env: dict) -> str:
    """A run's name in the CSV: its UTC start time and commit, e.g. 20261202T065340Z-1806d709bd51."""
    stamp = env["date_utc"][:19].replace("-", "").replace(":", "")
    return f"{stamp}Z-{env.get('commit') or 'nocommit'}"


def append_rows(rows: list[dict], path: Path | str = RESULTS_CSV) -> Path:
    """Appends rows to the long CSV (the header once, when the file is new). A file written with other columns
    (an older CSV_FIELDS) is first rewritten with the union of both, so old runs keep their values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(CSV_FIELDS)
    if path.exists() and path.stat().st_size > 0:
        old_rows = read_rows(path)
        with open(path, newline="") as f:
            old_fields = next(csv.reader(f))
        if old_fields != fields:
            fields = old_fields + [name for name in CSV_FIELDS if name not in old_fields]
            _write_rows(path, fields, old_rows)
    else:
        _write_rows(path, fields, [])
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerows(rows)
    return path


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path | str = RESULTS_CSV) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
