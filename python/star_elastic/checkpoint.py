"""Training checkpoints that survive crashes and refuse to load when damaged. No pickle anywhere.

A checkpoint is a directory ``<root>/step-<N>/`` holding tensors in safetensors files
(``tensors.safetensors``: model, router and optimizer tensors, RNG states), everything else in
``state.json``, and ``manifest.json`` with the size and SHA-256 of both. It is written into a
temporary sibling directory and renamed into place, and ``<root>/latest`` (a one-line file naming the
newest complete checkpoint) is replaced atomically afterwards: a crash at any moment leaves the
previous checkpoint loadable. Loading verifies the manifest first, so a truncated or corrupted
checkpoint raises :class:`CheckpointError` naming the file, instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS = "tensors.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, truncated or corrupted."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def split_tensors(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into ``tensors`` (keyed by its path) and return the
    JSON-able rest, with ``{"__tensor__": key}`` where a tensor was."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[json_key(k), split_tensors(v, f"{prefix}.{k}", tensors)]
                             for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        kind = "__tuple__" if isinstance(tree, tuple) else "__list__"
        return {kind: [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"checkpoint: cannot store {type(tree).__name__} at {prefix!r} without pickle")


def json_key(key: Any) -> Any:
    if isinstance(key, (str, int)):
        return key
    raise TypeError(f"checkpoint: dict key {key!r} must be str or int")


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {k: join_tensors(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(join_tensors(v, tensors) for v in tree["__tuple__"])
        if "__list__" in tree:
            return [join_tensors(v, tensors) for v in tree["__list__"]]
    return tree


def save_checkpoint(root: str | Path, step: int, payload: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``payload`` (nested dicts/lists of tensors and JSON values) as checkpoint ``step``.

    Atomic: the directory appears complete or not at all (a failed write, e.g. ``OSError`` from a
    full disk, removes what it had written and re-raises); ``latest`` moves only afterwards. Keeps
    the newest ``keep`` checkpoints. Returns the checkpoint directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        state = split_tensors(payload, "payload", tensors)
        save_file(tensors, str(staging / TENSORS))
        _fsync_write(staging / STATE, json.dumps({"step": step, "payload": state}))
        manifest = {name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)}
                    for name in (TENSORS, STATE)}
        _fsync_write(staging / MANIFEST, json.dumps(manifest, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk leaves no half-written staging dir
        raise
    pointer = root / f".{LATEST}.tmp-{os.getpid()}"
    _fsync_write(pointer, final.name + "\n")
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing") from None
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupted ({error})") from None
    for name, expected in manifest.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"checkpoint {path}: {name} is truncated or padded "
                                  f"({size} bytes, expected {expected['bytes']})")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} is corrupted (SHA-256 mismatch)")


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Any]]:
    """(step, payload) of a verified checkpoint directory."""
    path = Path(path)
    verify_checkpoint(path)
    tensors = load_file(str(path / TENSORS))
    state = json.loads((path / STATE).read_text())
    return state["step"], join_tensors(state["payload"], tensors)
