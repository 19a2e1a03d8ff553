"""What the compiled kernels are made of: the file patterns of csrc/ and a digest of their contents.

Plain Python without imports from the package or torch: setup.py loads this file by path to record the digest
of the sources it compiles into _build_info.json, and backends/native.py compares that record with the sources
present now, so an editable install whose csrc/ changed since its build (a `git pull`, a branch switch) compiles
the new sources instead of loading a stale _C whose op schemas no longer match the Python side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

KERNEL_SOURCE_PATTERNS = ("*.cpp", "*.h", "*.cu", "*.cuh")


def sources_digest(folder) -> str:
    """sha256 over the names and contents of the kernel sources in `folder`, in name order."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in KERNEL_SOURCE_PATTERNS for p in Path(folder).glob(pattern)}):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
