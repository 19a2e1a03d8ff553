"""The compiled kernels load, whichever way they were built."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import synthcl_fast
from synthcl_fast.backends.native import CSRC, build_mismatch, load_error


def test_extension_loads():
    assert load_error() is None


def _installed_copy(site):
    """The package as a wheel installs it: synthcl_fast/ with its kernel sources in synthcl_fast/csrc/, without
    an ahead-of-time build. Returns its synthcl_fast/ folder (put site on PYTHONPATH)."""
    package = site / "synthcl_fast"
    shutil.copytree(Path(synthcl_fast.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "_C.*", "_build_info.json", "csrc"))
    shutil.copytree(CSRC, package / "csrc")
    return package


@pytest.mark.skipif(not CSRC.is_dir(), reason="no csrc/ next to the package (not a source checkout)")
def test_compile_on_first_use(tmp_path):
    """What `pip install -e .` without torch at build time relies on: a one-line message, a compile into
    the cache, the same numbers as the reference; a second process finds the cache and prints nothing, also
    from an installed copy of the package (its own csrc/, files newer than the build): the cache is keyed by
    the sources' contents, and ninja does not rebuild it for another place or newer file times."""
    script = textwrap.dedent("""
        import torch, synthcl_fast.losses as L
        from synthcl_fast.backends import native
        z = torch.randn(20, 8, dtype=torch.float64)
        print(native.CSRC)
        print(float((L.nt_xent(z[:10], z[10:], backend="cpu") - L.nt_xent(z[:10], z[10:], backend="reference")).abs()))
    """)
    package = _installed_copy(tmp_path / "site")
    later = (package / "__init__.py").stat().st_mtime + 3600
    for source in (package / "csrc").iterdir():
        os.utime(source, (later, later))
    cache = tmp_path / "cache"
    env = dict(os.environ, SYNTHCL_FAST_FORCE_JIT="1", SYNTHCL_FAST_CACHE=str(cache))
    runs, library_times = [], []
    for run_env in (env, dict(env, PYTHONPATH=str(package.parent))):
        runs.append(subprocess.run([sys.executable, "-c", script], env=run_env, capture_output=True, text=True,
                                   timeout=600, cwd=tmp_path))
        assert runs[-1].returncode == 0, runs[-1].stderr
        library_times.append([path.stat().st_mtime_ns for path in cache.rglob("synthcl_fast_cpu.so")])
    for run, csrc in zip(runs, (CSRC, package / "csrc")):
        lines = run.stdout.strip().splitlines()
        assert lines[-2] == str(csrc)
        assert float(lines[-1]) < 1e-12
    assert "synthcl_fast: compiling the CPU kernels" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
    assert len(library_times[0]) == 1 and library_times[1] == library_times[0]  # not rebuilt


def test_labels_on_another_device_are_rejected():
    features = torch.randn(4, 3)
    with pytest.raises(ValueError, match="anchor_labels is on meta but the features are on cpu"):
        import synthcl_fast.losses as L

        L.contrastive_loss(features, anchor_labels=torch.zeros(4, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("info, torch_version, torch_cuda, expected", [
    (None, "2.14.1+cu130", "13.0", None),  # no ahead-of-time build
    ({"torch": "2.13.0+cpu", "cuda": None}, "2.13.0+cpu", None, None),
    ({"torch": "2.14.01+cu130", "cuda": "13.0"}, "2.14.1+cu130", "13.0", None),  # the same version, spelled apart
    ({"torch": "2.13.0+cpu", "cuda": None}, "2.14.1+cu130", "13.0",
     "built against torch 2.13.0+cpu but torch 2.14.1+cu130"),
    ({"torch": "2.14.1", "cuda": None}, "2.14.1+cpu", None, "built against torch 2.14.1 but torch 2.14.1+cpu"),
    ({"torch": "2.14.0", "cuda": None}, "2.14.1", None, "built against torch 2.14.0 but torch 2.14.1"),
    ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cu130", "12.8",
     "CUDA 13.0 kernels but this torch has CUDA 12.8"),
    ({"torch": "not a version"}, "2.14.1", None, "built against torch not a version but torch 2.14.1"),
    ({"cuda": None}, "2.14.1", None, "built against torch None"),
    ({"unreadable": "x/_build_info.json cannot be read (bad JSON)"}, "2.14.1", None, "cannot be read (bad JSON)"),
])
def test_build_mismatch(info, torch_version, torch_cuda, expected):
    """_C is loaded only under the torch (release and local build) and CUDA it was compiled against."""
    found = build_mismatch(info, torch_version, torch_cuda)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


def test_a_build_from_other_sources_is_not_loaded(tmp_path):
    """An editable install whose csrc/ changed after its build: the recorded digest no longer matches, and _C is
    not loaded (it would fail on every call where an op's schema changed, or run the old kernels)."""
    from synthcl_fast._kernel_sources import sources_digest

    for name, text in (("a.cpp", "int a;"), ("b.h", "#pragma once"), ("notes.txt", "not a source")):
        (tmp_path / name).write_text(text)
    digest = sources_digest(tmp_path)
    info = {"torch": "2.14.1", "cuda": None, "sources_sha256": digest}
    assert build_mismatch(info, "2.14.1", None, sources=digest) is None
    (tmp_path / "notes.txt").write_text("edited")               # not a kernel source: the same digest
    assert sources_digest(tmp_path) == digest
    (tmp_path / "a.cpp").write_text("int a = 1;")
    changed = build_mismatch(info, "2.14.1", None, sources=sources_digest(tmp_path))
    assert changed is not None and "built from other kernel sources" in changed
    (tmp_path / "a.cpp").rename(tmp_path / "c.cpp")              # a renamed file counts too
    assert sources_digest(tmp_path) not in (digest, sources_digest(tmp_path.parent))
    # by default the sources present now (CSRC) are digested
    assert build_mismatch(info | {"sources_sha256": sources_digest(CSRC)}, "2.14.1", None) is None
    assert "other kernel sources" in build_mismatch(info, "2.14.1", None)


def test_a_mismatched_build_is_not_loaded(tmp_path):
    """An installed package (its own csrc/) whose _build_info.json names another torch: importing and calling it
    never loads _C (here a module that raises if imported), warns once naming both versions, and, with the
    first-use compile switched off, `auto` runs the reference while `backend="cpu"` raises naming the mismatch.
    The package lane (.ci/package_lane.sh) runs the fallback compile itself on an installed wheel."""
    package = _installed_copy(tmp_path / "site")
    (package / "_C.py").write_text("raise RuntimeError('the mismatched build was loaded')\n")
    (package / "_build_info.json").write_text(json.dumps({"torch": "2.4.0", "cuda": None}))
    script = textwrap.dedent("""
        import warnings, torch
        import synthcl_fast, synthcl_fast.losses as L
        from synthcl_fast.backends import native
        print(native.CSRC)
        z = torch.randn(20, 8, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = L.nt_xent(z[:10], z[10:])
        assert float((value - L.nt_xent(z[:10], z[10:], backend="reference")).abs()) == 0
        for w in caught:
            print("WARNING", w.message)
        try:
            L.nt_xent(z[:10], z[10:], backend="cpu")
        except Exception as error:
            print("RAISED", type(error).__name__, error)
    """)
    env = dict(os.environ, PYTHONPATH=str(package.parent), SYNTHCL_FAST_NO_JIT="1")
    env.pop("SYNTHCL_FAST_FORCE_JIT", None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == str(package / "csrc")
    mismatch = f"built against torch 2.4.0 but torch {torch.__version__} is installed"
    warned = [line for line in lines if line.startswith("WARNING") and mismatch in line]
    assert len(warned) == 1, run.stdout
    raised = [line for line in lines if line.startswith("RAISED")]
    assert len(raised) == 1 and mismatch in raised[0] and "SYNTHCL_FAST_NO_JIT=1" in raised[0], run.stdout
