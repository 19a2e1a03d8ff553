"""Checkpoints that are never half-written, that detect damage, and that restore a run exactly.

File layout (one file per checkpoint, `checkpoints/ckpt-<global step>.pt`):

    MAGIC (16 bytes) | payload length (8 bytes, little endian) | SHA-256 of the payload (32 bytes) | payload

The payload is a `torch.save` of plain containers and tensors (loaded back with weights_only=True).
Writes go to a temporary file in the same folder, are fsync'ed and renamed over the target, so a crash
leaves either the old file or the new one. The last `keep` checkpoints are kept: when the newest one is
damaged (truncated by a full disk, bit rot), `latest_checkpoint` reports it and falls back to the one
before.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

MAGIC = b"SYNTHCL-CKPT-v1\n"
HEADER = struct.Struct(f"<{len(MAGIC)}sQ32s")
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted, or not a checkpoint."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old content or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def save_checkpoint(folder: Path, state: dict, step: int, keep: int) -> Path:
    """Atomically write `state` as checkpoint number `step`, then delete all but the newest `keep`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = Path(folder) / f"ckpt-{step:08d}.pt"
    atomic_write_bytes(path, HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    """Read and verify one checkpoint; CheckpointError says what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        what = "is truncated (shorter than its header)" if MAGIC.startswith(data[:len(MAGIC)]) else \
            "is not a synthcl_fast checkpoint (bad magic bytes)"
        raise CheckpointError(f"checkpoint {path} {what}")
    _, length, digest = HEADER.unpack_from(data)
    payload = data[HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path} is truncated: its header announces {length} bytes of data, "
                              f"the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted: its SHA-256 checksum does not match its content")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # the checksum matched, so this is a format problem, not damage
        raise CheckpointError(f"checkpoint {path} could not be unpickled: {error}") from None


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> tuple[Path, dict]:
    """The newest checkpoint in `folder` that passes verification. Damaged newer ones are reported on
    stderr and skipped (left in place for inspection)."""
    problems = []
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            problems.append(str(error))
            print(f"synthcl-train: warning: {error}; trying the previous checkpoint", file=sys.stderr)
    detail = "; ".join(problems) if problems else "there are none"
    raise CheckpointError(f"no usable checkpoint in {folder}: {detail}")


# --- random number generator states -----------------------------------------------------------------

def rng_state() -> dict:
    """The states of every generator training draws from (torch CPU and CUDA, numpy, python)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
