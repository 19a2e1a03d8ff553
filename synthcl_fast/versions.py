"""The versions synthcl_fast supports, and whether the ones installed here are among them.

The bounds are written once, in pyproject.toml (`requires-python`, `dependencies`, the `triton` extra), and read
back here from the installed package's metadata; every comparison goes through packaging.version. NEWEST_TESTED
names the newest release of each that CI runs (.ci/run): newer ones are allowed, but untested.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

DISTRIBUTION = "synthcl_fast"
# The newest of each that CI tests: Python in the package lane (the wheel installed there), torch in the main
# lane, triton in the newest-triton lane (tests/test_versions.py checks these against .ci/run).
NEWEST_TESTED = {"python": "3.13", "torch": "2.14.1", "triton": "3.9.0"}


@dataclass(frozen=True)
class VersionCheck:
    name: str
    installed: str | None   # None: not installed
    specifier: str | None   # None: unknown (synthcl_fast's metadata not found); "": no bound
    supported: bool | None  # None when either is unknown

    def describe(self) -> str:
        bound = f"supported: {self.specifier or 'any version'}"
        if self.installed is None:
            return f"{self.name}: not installed" + (f" ({bound})" if self.specifier is not None else "")
        if self.specifier is None:
            return f"{self.name} {self.installed}: supported range unknown ({DISTRIBUTION}'s metadata not found)"
        if not self.supported:
            return f"{self.name} {self.installed}: NOT in the supported range ({bound})"
        text = f"{self.name} {self.installed}: in the supported range ({bound})"
        newest = NEWEST_TESTED.get(self.name)
        if newest and _newer(self.installed, newest):
            text += f", newer than the newest tested ({newest})"
        return text


def _newer(installed: str, newest: str) -> bool:
    """Whether installed's release is past newest's, compared as far as newest goes (3.11.7 is not past 3.11;
    2.14.1+cu130 is not past 2.14.1)."""
    bound = Version(newest).release
    return Version(installed).release[:len(bound)] > bound


def supported_specifiers() -> dict[str, SpecifierSet] | None:
    """{"python": ..., "torch": ..., "triton": ...} as the installed package declares them, None where it is not
    installed (a source tree on sys.path). A requirement behind an extra (triton) counts too: it bounds the
    version wherever that package is used."""
    try:
        metadata = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    specifiers = {"python": SpecifierSet(metadata.get("Requires-Python") or "")}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        name = requirement.name.lower()
        if name in ("torch", "triton"):
            specifiers[name] = specifiers.get(name, SpecifierSet()) & requirement.specifier
    return specifiers


def is_supported(version: str, specifier: SpecifierSet) -> bool:
    """Whether `version` lies in `specifier`. A local version (2.5.1+cu124) counts as its public part, a
    pre-release (2.16.0.dev20261101) is compared like any other; a version that does not parse is not supported."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return specifier.contains(Version(parsed.public), prereleases=True)


def installed_versions() -> dict[str, str | None]:
    """Python, torch and triton as found here (triton None where it does not import)."""
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:  # absent, or a broken install: backends.triton_support says why
        versions["triton"] = None
    return versions


def check_versions(installed: dict[str, str | None] | None = None) -> list[VersionCheck]:
    """One VersionCheck each for Python, torch and triton (as installed here, unless given)."""
    specifiers = supported_specifiers()
    checks = []
    for name, version in (installed or installed_versions()).items():
        specifier = None if specifiers is None else specifiers.get(name, SpecifierSet())
        supported = None if version is None or specifier is None else is_supported(version, specifier)
        checks.append(VersionCheck(name, version, None if specifier is None else str(specifier), supported))
    return checks
