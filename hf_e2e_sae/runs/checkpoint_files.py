"""What a checkpoint folder holds, written without pickle and read back strictly.

    model.safetensors         SAE weights only ("saes.<site>.<param>")
    optimizer.bin             Adam state (torch.save; read with torch.load(weights_only=True): no code runs)
    scheduler.json            LR schedule position
    scaler.json               fp16 loss-scaler state (fp16 runs only)
    trainer_state.safetensors alive-feature window (bool per site)
    rng_state_<rank>.safetensors  torch RNG (python / numpy RNG in its metadata, as JSON)
    train_config.yaml         the run's config, credentials redacted
    data_state_<rank>.json    streamed data only: the process's position in its share of the stream (JSON)
    trainer_state.json        step, samples (the data position), window; written LAST, with every other
                              file's size and sha256: a checkpoint is complete when it and all the files it
                              lists are, with those sizes and hashes (a file swapped for another of the same
                              size is refused); model.safetensors' metadata repeats step and samples

Every error names the file. Nothing here unpickles anything.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .output_dir import disk_error, write_bytes_durably

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
WINDOW_FILE = "trainer_state.safetensors"
CONFIG_FILE = "train_config.yaml"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is incomplete, damaged or unreadable; the message names the file."""


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.safetensors"


def write_file(path: Path, make_bytes) -> None:
    """Serialise with `make_bytes()` and write durably; a full disk becomes `DiskFullError` naming `path`."""
    try:
        data = make_bytes()
    except RuntimeError as e:
        mapped = disk_error(e, path)
        raise mapped if mapped is e else mapped from e
    write_bytes_durably(path, data)


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode() + b"\n"


def write_rng_state(folder: Path, rank: int) -> None:
    np_state = np.random.get_state()
    metadata = {"python": json.dumps(random.getstate()),
                "numpy": json.dumps([np_state[0], np_state[1].tolist(), *map(float, np_state[2:])])}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    write_file(folder / rng_file(rank), lambda: save_safetensors(tensors, metadata=metadata))


def data_state_file(rank: int) -> str:
    return f"data_state_{rank}.json"


def write_data_state(folder: Path, rank: int, state: dict) -> None:
    """This process's streamed-data position (`data.train_loader.StreamLoader.data_state`), as JSON."""
    write_file(folder / data_state_file(rank), lambda: _json_bytes(state))


def read_data_state(folder: Path, rank: int) -> Optional[dict]:
    """This process's saved streamed-data position; None when the checkpoint has none (map-style data, older runs)."""
    path = folder / data_state_file(rank)
    return _read(path, lambda p: json.loads(p.read_text())) if path.is_file() else None


def write_main_files(folder: Path, saes: dict, optimizer, scheduler, scaler, window: dict, config_yaml: str,
                     counters: Optional[dict] = None) -> None:
    """The main process's files, all but trainer_state.json (which `write_state_file` writes last); `counters`
    (step, samples) go into model.safetensors' metadata, so an edited trainer_state.json is found."""
    metadata = {"format": "pt", **{k: str(v) for k, v in (counters or {}).items() if k in ("step", "samples")}}
    write_file(folder / MODEL_FILE, lambda: save_safetensors(saes, metadata=metadata))
    write_file(folder / OPTIMIZER_FILE, lambda: _torch_bytes(optimizer.state_dict()))
    write_file(folder / SCHEDULER_FILE, lambda: _json_bytes(scheduler.state_dict()))
    if scaler is not None:
        write_file(folder / SCALER_FILE, lambda: _json_bytes(scaler.state_dict()))
    write_file(folder / WINDOW_FILE, lambda: save_safetensors({k: v.cpu() for k, v in window.items()}))
    write_file(folder / CONFIG_FILE, lambda: config_yaml.encode())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_state_file(folder: Path, state: dict) -> None:
    """trainer_state.json, listing every other file with its size and sha256 (the completeness record)."""
    paths = [p for p in sorted(folder.iterdir()) if p.name != STATE_FILE]
    files = {p.name: p.stat().st_size for p in paths}
    hashes = {p.name: file_sha256(p) for p in paths}
    write_file(folder / STATE_FILE, lambda: _json_bytes({"format": FORMAT, **state, "files": files, "sha256": hashes}))


_COUNTERS = ("step", "samples", "window_tokens")


def _state_problem(state_path: Path, state) -> Optional[str]:
    """Why the parsed trainer_state.json is not one this library wrote (edited or garbled), or None."""
    if not isinstance(state, dict):
        return f"{state_path} is damaged (not a JSON object)"
    for key in _COUNTERS:
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{state_path} is damaged or edited ({key}={value!r}; a non-negative int was written)"
    files, hashes = state.get("files"), state.get("sha256", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 0 for k, v in files.items()):
        return f"{state_path} is damaged or edited (files must map file names to sizes)"
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        return f"{state_path} is damaged or edited (sha256 must map file names to hex digests)"
    if any("/" in name or "\\" in name or name in ("", ".", "..") for name in files):
        return f"{state_path} is damaged or edited (a listed file is not in the checkpoint folder)"
    return None


def _counters_problem(folder: Path, state: dict) -> Optional[str]:
    """model.safetensors records the step and samples it was written at; trainer_state.json must agree."""
    try:
        with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        return f"{folder / MODEL_FILE} is damaged ({e})"
    for key in ("step", "samples"):
        if key in metadata and metadata[key] != str(state[key]):
            return (f"{folder / STATE_FILE} says {key}={state[key]}, but {MODEL_FILE} was written at {key}="
                    f"{metadata[key]} (edited, or the files of two checkpoints mixed)")
    return None


def checkpoint_problem(folder: Path, expected: Optional[dict] = None, check_config=None) -> Optional[str]:
    """Why `folder` is not a complete checkpoint (a message naming the file), or None.

    Args:
        expected: {tensor name: shape} model.safetensors must hold exactly (None: not checked).
        check_config: called with `folder` once its train_config.yaml is known to exist, before the tensors are
            checked; raises when the run's config may not resume this checkpoint.
    """
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return f"{state_path} is missing (the checkpoint was never completed, or predates this format)"
    try:
        state = json.loads(state_path.read_text())
    except (ValueError, OSError) as e:
        return f"{state_path} is damaged ({' '.join(str(e).split())})"
    problem = _state_problem(state_path, state)
    if problem:
        return problem
    files, hashes = state["files"], state.get("sha256", {})
    for name in (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, CONFIG_FILE):
        if name not in files:
            return f"{state_path} does not list {name}"
    if check_config is not None and (folder / CONFIG_FILE).is_file():
        check_config(folder)  # a changed config is the caller's error, not an incomplete checkpoint: raises
    if expected is not None and (folder / MODEL_FILE).is_file():
        problem = _model_file_problem(folder / MODEL_FILE, expected)  # the most specific message first
        if problem:
            return problem
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is truncated or changed ({path.stat().st_size} bytes, {size} were written)"
    for name, digest in hashes.items():
        if (folder / name).is_file() and file_sha256(folder / name) != digest:
            return (f"{folder / name} does not match the sha256 {STATE_FILE} records for it (changed, or swapped "
                    "for another run's file, after the checkpoint was written)")
    return _counters_problem(folder, state) if (folder / MODEL_FILE).is_file() else None


def _model_file_problem(path: Path, expected: dict) -> Optional[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        return f"{path} is damaged ({e})"
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k]) != shapes[k])
    if missing or unexpected or wrong:
        return (f"{path} does not hold this run's SAE weights (missing tensors {missing}, unexpected {unexpected}, "
                f"wrong shapes {wrong})")
    return None


def _read(path: Path, parse):
    try:
        return parse(path)
    except Exception as e:  # any failure to read a checkpoint file is reported with its name
        raise CheckpointError(f"{path}: cannot be read as a checkpoint file ({type(e).__name__}: {e})") from e


def read_state(folder: Path) -> dict:
    return _read(folder / STATE_FILE, lambda p: json.loads(p.read_text()))


def read_saes(folder: Path) -> dict:
    return _read(folder / MODEL_FILE, lambda p: load_safetensors(p.read_bytes()))


def read_optimizer(folder: Path) -> dict:
    return _read(folder / OPTIMIZER_FILE, lambda p: torch.load(p, map_location="cpu", weights_only=True))


def read_json(folder: Path, name: str) -> dict:
    return _read(folder / name, lambda p: json.loads(p.read_text()))


def read_window(folder: Path) -> dict:
    return _read(folder / WINDOW_FILE, lambda p: load_safetensors(p.read_bytes()))


def restore_rng_state(folder: Path, rank: int) -> bool:
    """Restore this process's RNG state; False when the checkpoint has none for `rank`."""
    path = folder / rng_file(rank)
    if not path.is_file():
        return False

    def parse(p: Path):
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    tensors, metadata = _read(path, parse)
    python_state = json.loads(metadata["python"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return True
