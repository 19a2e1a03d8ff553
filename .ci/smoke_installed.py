"""What a user gets from an installed synthcl_fast (issue 27): run by .ci/package_lane.sh in a fresh venv, from a
folder outside the repository, against the installed package only. Fails (non-zero exit) if the package is not
the installed one, if it carries no kernel sources, if the kernels do not load the way `--expect` says, or if the
fused cpu backend disagrees with the float64 reference beyond the tolerances it declares.

    python .ci/smoke_installed.py --expect first-use|ahead-of-time|mismatch [--train-extra]

first-use      no compiled extension: the kernels are compiled from the package's csrc/ on the first call
ahead-of-time  synthcl_fast._C, built against this torch (_build_info.json says so), is what runs
mismatch       _build_info.json names another torch: one warning, _C is not loaded, first-use compile instead
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import torch


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"smoke: FAILED: {message}")


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    return float((value.detach().double() - expected.detach()).norm() / expected.detach().norm().clamp_min(1e-30))


def check_installed_layout() -> None:
    import synthcl_fast
    from synthcl_fast.backends import native

    package = Path(synthcl_fast.__file__).resolve().parent
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    check(package.parent in site, f"synthcl_fast imported from {package}, not from this venv's site-packages {site}")
    check(native.CSRC == package / "csrc", f"kernel sources found at {native.CSRC}, not in the package")
    carried = {path.name for path in native.CSRC.iterdir()}
    needed = set(native.CPU_SOURCES)  # what the first-use compile builds (its headers: it fails without them)
    check(needed <= carried, f"the package's csrc/ lacks {sorted(needed - carried)}")
    print(f"smoke: synthcl_fast {synthcl_fast.__version__} from {package}; torch {torch.__version__}; "
          f"kernel sources: {sorted(carried)}")


def check_kernels_load(expect: str) -> None:
    from synthcl_fast.backends import native

    info = native.build_info()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = native.load_error()
    check(error is None, f"the cpu kernels did not load: {error}")
    aot = "synthcl_fast._C" in sys.modules
    mismatch_warnings = [str(w.message) for w in caught if "was built against torch" in str(w.message)]
    if expect == "first-use":
        check(info is None and not aot, f"expected no ahead-of-time build, found {info}, _C loaded: {aot}")
    elif expect == "ahead-of-time":
        check(aot, "synthcl_fast._C was not loaded")
        check(info is not None and info.get("torch") == torch.__version__,
              f"_build_info.json {info} does not name the installed torch {torch.__version__}")
    else:
        check(not aot, "synthcl_fast._C was loaded although _build_info.json names another torch")
        check(len(mismatch_warnings) == 1,
              f"expected one warning naming the mismatch, got {[str(w.message) for w in caught]}")
        print(f"smoke: warned: {mismatch_warnings[0]}")
    check(expect == "mismatch" or not mismatch_warnings, f"unexpected warning: {mismatch_warnings}")


def check_against_reference() -> None:
    """The fused cpu backend against the float64 reference on fresh random inputs (no fixed seed): NT-Xent and
    SupCon values and gradients in float32 and float64, within the tolerances the cpu backend declares (the
    reference computed on the same rounded inputs, as in tests/test_conformance.py)."""
    import synthcl_fast.losses as L
    from synthcl_fast.backends import BACKENDS, available_backends

    check(available_backends("cpu")["cpu"] is None, f"cpu backend unavailable: {available_backends('cpu')['cpu']}")
    tolerances = BACKENDS["cpu"].tolerances(torch.device("cpu"))
    seed = int(torch.seed())
    for dtype in (torch.float32, torch.float64):
        value_tolerance, gradient_tolerance = tolerances[dtype]
        z = torch.randn(2, 37, 19, dtype=torch.float64)
        labels = torch.randint(0, 5, (41,))
        features = torch.randn(41, 23, dtype=torch.float64)
        cases = {"nt_xent": (lambda a, b, backend: L.nt_xent(a, b, temperature=0.3, backend=backend), (z[0], z[1])),
                 "supcon": (lambda f, backend: L.supcon(f, labels, temperature=0.2, backend=backend), (features,))}
        for name, (loss_fn, inputs) in cases.items():
            fused_inputs = [x.to(dtype).requires_grad_() for x in inputs]
            expected_inputs = [x.detach().double().requires_grad_() for x in fused_inputs]
            expected = loss_fn(*expected_inputs, backend="reference")
            expected_grads = torch.autograd.grad(expected, expected_inputs)
            fused = loss_fn(*fused_inputs, backend="cpu")
            fused_grads = torch.autograd.grad(fused, fused_inputs)
            value_error = relative_error(fused, expected)
            gradient_error = max(relative_error(g, e) for g, e in zip(fused_grads, expected_grads))
            check(value_error <= value_tolerance and gradient_error <= gradient_tolerance,
                  f"{name} {dtype} (seed {seed}): relative error {value_error:.2e} (value, tolerance "
                  f"{value_tolerance:.0e}), {gradient_error:.2e} (gradients, tolerance {gradient_tolerance:.0e})")
            print(f"smoke: {name} {dtype}: cpu vs reference relative error {value_error:.1e} (value), "
                  f"{gradient_error:.1e} (gradients)")


def check_drop_in() -> None:
    """lightly's NTXentLoss, swapped by one import line, computes the reference NT-Xent (lightly is not installed:
    the drop-in must not need it)."""
    import synthcl_fast.losses as L
    from synthcl_fast.compat.lightly import NTXentLoss

    out0, out1 = torch.randn(2, 16, 8, dtype=torch.float64).unbind(0)
    value = NTXentLoss(temperature=0.5)(out0, out1)
    expected = L.nt_xent(out0, out1, temperature=0.5, backend="reference")
    check(relative_error(value, expected) < 1e-10, f"drop-in NTXentLoss {float(value)} != reference {float(expected)}")
    print("smoke: compat.lightly.NTXentLoss matches the reference")


def check_commands(train_extra: bool) -> None:
    report = subprocess.run([sys.executable, "-m", "synthcl_fast.env_report"], capture_output=True, text=True,
                            timeout=600)
    check(report.returncode == 0, f"env_report failed:\n{report.stderr}")
    cpu_line = next((line for line in report.stdout.splitlines() if line.strip().startswith("cpu ")), "")
    check(cpu_line.split()[1:2] == ["available"], f"env_report does not list the cpu backend as available:\n"
                                                  f"{report.stdout}")
    print("smoke: env_report:\n" + "\n".join("  " + line for line in report.stdout.splitlines()
                                            if "build" in line or "kernel sources" in line or "available" in line))
    train = subprocess.run(["synthcl-train", "--help"], capture_output=True, text=True, timeout=600)
    if train_extra:
        check(train.returncode == 0 and "usage" in train.stdout, f"synthcl-train --help failed:\n{train.stderr}")
        print("smoke: synthcl-train --help works")
    else:
        last = (train.stderr.strip().splitlines() or [""])[-1]
        check(train.returncode != 0 and "pip install 'synthcl_fast[train]'" in last,
              f"synthcl-train without the train extra must name it, got rc {train.returncode}:\n{train.stderr}")
        print(f"smoke: synthcl-train without the train extra says: {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expect", required=True, choices=["first-use", "ahead-of-time", "mismatch"])
    parser.add_argument("--train-extra", action="store_true",
                        help="synthcl_fast[train] is installed: synthcl-train --help must work (else: fail naming it)")
    args = parser.parse_args()
    check(not Path("synthcl_fast").exists(), f"run from a folder without a synthcl_fast/ checkout, not {Path.cwd()}")
    check_installed_layout()
    check_kernels_load(args.expect)
    check_against_reference()
    check_drop_in()
    check_commands(args.train_extra)
    print(f"smoke ({args.expect}): OK")


if __name__ == "__main__":
    main()
