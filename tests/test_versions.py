"""The supported versions: read from the package's metadata, compared with packaging.version, reported by
env_report, and the ends of each range are the versions CI's compatibility lanes install (.ci/run)."""

import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from synthcl_fast import env_report, versions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version,specifier,expected", [
    ("2.5.1+cu124", ">=2.5", True),            # a local build counts as its release
    ("2.4.1", ">=2.5", False),
    ("2.10.0", ">=2.5", True),                 # 10 > 5 as numbers (a string comparison says otherwise)
    ("2.16.0.dev20261101+cu130", ">=2.5", True),  # a nightly
    ("3.1.0", ">=3.1", True),
    ("3.0.0", ">=3.1", False),
    ("not-a-version", ">=2.5", False),
    ("1.0", "", True),                         # no bound
])
def test_is_supported(version, specifier, expected):
    assert versions.is_supported(version, SpecifierSet(specifier)) is expected


def test_check_versions_reports_each_verdict():
    bounds = versions.supported_specifiers()
    if bounds is None:
        pytest.skip("synthcl_fast is not installed as a distribution (no metadata)")
    torch_floor = min(spec.version for spec in bounds["torch"] if spec.operator == ">=")
    below = Version(torch_floor).release[:2]
    too_old = f"{below[0]}.{below[1] - 1}.0" if below[1] > 0 else f"{below[0] - 1}.99.0"
    checks = {c.name: c for c in versions.check_versions({"python": "3.9.18", "torch": too_old + "+cu121",
                                                          "triton": None})}
    assert checks["python"].supported is False and "NOT in the supported range" in checks["python"].describe()
    assert checks["torch"].supported is False and checks["torch"].specifier == str(bounds["torch"])
    assert checks["triton"].installed is None and "not installed" in checks["triton"].describe()
    newest = {name: ".".join(str(p) for p in Version(v).release[:-1] + (Version(v).release[-1] + 1,))
              for name, v in versions.NEWEST_TESTED.items()}
    for check in versions.check_versions(newest):
        assert check.supported, check
        assert "newer than the newest tested" in check.describe()


def test_env_report_prints_the_versions_and_verdicts(capsys):
    env_report.main([])
    out = capsys.readouterr().out
    section = out[out.index("versions:"):]
    for name in ("python", "torch", "triton"):
        assert re.search(rf"^  {name}\b", section, re.M), section


def _pyproject_bound(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.findall(rf'"{name}\s*>=\s*([0-9.]+)', text)
    assert len(found) == 1, f"one lower bound for {name} in pyproject.toml, got {found}"
    return found[0]


def test_ci_lanes_test_the_ends_of_the_declared_ranges():
    """pyproject.toml's lower bounds are what the oldest-torch lane installs, and NEWEST_TESTED is what the
    package lane (Python) and the newest-triton lane install: change one, and the others must follow."""
    ci = (ROOT / ".ci" / "run").read_text()
    lane = {key: re.search(rf"^{key}=(\S+)$", ci, re.M).group(1)
            for key in ("oldest_python", "newest_python", "oldest_torch", "newest_triton", "oldest_triton")}
    requires_python = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert lane["oldest_python"] == requires_python.group(1)
    assert Version(lane["oldest_torch"]).release[:2] == Version(_pyproject_bound("torch")).release[:2]
    assert lane["newest_python"] == versions.NEWEST_TESTED["python"]
    assert lane["newest_triton"] == versions.NEWEST_TESTED["triton"]
    assert Version(lane["oldest_triton"]).release[:2] == Version(_pyproject_bound("triton")).release[:2]
    assert "torch==2.14.1" in ci and versions.NEWEST_TESTED["torch"] == "2.14.1"  # the main lane
