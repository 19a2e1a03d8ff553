"""Every environment variable is documented once: synthcl_fast/environment.py, rendered in docs/environment.md,
printed by env_report."""

import re
import subprocess
import sys
from pathlib import Path

from synthcl_fast.environment import VARIABLES, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "CMakeLists.txt", "synthcl_fast", "csrc", "benchmarks", "tests", ".ci"]


def test_every_variable_read_anywhere_is_in_the_table():
    documented = {v.name for v in VARIABLES}
    used = set()
    for source in SOURCES:
        path = ROOT / source
        for file in ([path] if path.is_file() else path.rglob("*")):
            if file.is_file() and file.suffix in (".py", ".sh", ".cpp", ".cu", ".h", ".cuh", ".txt", "") \
                    and "__pycache__" not in file.parts:
                used |= set(re.findall(r"SYNTHCL_FAST_[A-Z0-9_]+", file.read_text(errors="ignore")))
    used.discard("SYNTHCL_FAST_SANITIZE")  # a CMake option (-D), not an environment variable
    for source in ("csrc",):  # C++ macros share the prefix
        for file in (ROOT / source).rglob("*"):
            if file.is_file():
                used -= set(re.findall(r"#define (SYNTHCL_FAST_[A-Z0-9_]+)", file.read_text(errors="ignore")))
    assert used <= documented, f"undocumented: {sorted(used - documented)}"


def test_docs_hold_the_table():
    assert markdown_table() in (ROOT / "docs" / "environment.md").read_text()


def test_env_report_prints_every_variable():
    done = subprocess.run([sys.executable, "-m", "synthcl_fast.env_report"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for v in VARIABLES:
        assert v.name in done.stdout
