"""Reading weight files so that every failure names the file and, where there is one, the tensor.

- A safetensors file's header is checked against its size before any tensor is read: a truncated
  or corrupt file says which tensor runs past the end, instead of a deserialiser traceback.
- A pickled `pytorch_model.bin` is read with `torch.load(weights_only=True)` only. When its pickle
  asks for anything but tensors (code to run, arbitrary objects) it is refused in one line naming
  what it asked for; the remedy offered is a safetensors copy, never a less safe load.
- `check_tensors` compares what the files hold with what the model expects (missing, unexpected,
  wrong shape), so a folder with a tensor missing is refused rather than loaded with that layer
  left at random values.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
import torch

#: Bytes per element of the safetensors dtypes.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_LISTED = 10  # tensor names listed per kind of problem


class CheckpointError(ValueError):
    """A checkpoint folder cannot be loaded; the message names the folder or file and what is wrong."""


def safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, dtype)} of a safetensors file, after checking that the header parses
    and that every tensor's bytes lie inside the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: not a safetensors file ({size} bytes, truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{file}: truncated or not a safetensors file (its header "
                                      f"claims {n:,} bytes, the file has {size:,})")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: tensor {name}: corrupt header entry {info!r}") from None
        count = 1
        for d in shape:
            count *= d
        if dtype not in _DTYPE_BYTES or end - start != count * _DTYPE_BYTES[dtype] or start < 0:
            raise CheckpointError(f"{file}: tensor {name}: header says {dtype} {shape} in bytes "
                                  f"{start}-{end}, which do not match")
        if end > data:
            raise CheckpointError(f"{file}: truncated: tensor {name} needs bytes up to {end:,} of the "
                                  f"data, the file holds {data:,} (copy it again)")
        out[name] = (shape, dtype)
    return out


def load_pickled(file: Path) -> dict[str, torch.Tensor]:
    """A `pytorch_model.bin` state dict, read as plain tensors only (never running its code)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        asked = f"`{found.group(1)}`" if found else "objects other than tensors"
        raise CheckpointError(
            f"{file}: refused: its pickle asks for {asked}, which a weights file never needs (it "
            "could run code; nothing from it was run). Use a safetensors copy of this checkpoint "
            "(model.safetensors), e.g. from its publisher") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: not a readable PyTorch weights file (truncated or corrupt: {reason})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: holds {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def tensor_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """{tensor name: (shape, file)} over all weight files, without loading safetensors data."""
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        if file.suffix == ".safetensors":
            shapes = {name: shape for name, (shape, _) in safetensors_header(file).items()}
        else:
            shapes = {name: tuple(t.shape) for name, t in load_pickled(file).items()}
        for name, shape in shapes.items():
            if name in found:
                raise CheckpointError(f"tensor {name} is in both {found[name][1]} and {file}")
            found[name] = (shape, file)
    return found


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Every (name, tensor, file) of every file, one file open at a time, each checked first."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        if file.suffix == ".safetensors":
            safetensors_header(file)
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():
                        yield name, handle.get_tensor(name), file
            except SafetensorError as exc:
                raise CheckpointError(f"{file}: cannot read ({exc})") from None
        else:
            state = load_pickled(file)
            for name, tensor in state.items():
                yield name, tensor, file
            del state


def check_tensors(folder: Path, found: Mapping[str, tuple[tuple[int, ...], Path]],
                  expected: Mapping[str, tuple[int, ...]], may_be_absent: frozenset[str] = frozenset()) -> None:
    """Refuse a checkpoint whose tensors are not exactly the model's: every missing, unexpected or
    wrong-shaped tensor is named (with its file), a few of each kind."""
    missing = sorted(set(expected) - set(found) - may_be_absent)
    unexpected = sorted(f"{name} (in {found[name][1].name})" for name in set(found) - set(expected))
    wrong = sorted(f"{name} in {found[name][1].name} is {found[name][0]}, the model expects {expected[name]}"
                   for name in set(found) & set(expected) if tuple(found[name][0]) != tuple(expected[name]))
    problems = [f"{label}: {_listed(items)}" for label, items in (
        ("missing tensors (they would be left random)", missing), ("tensors the model does not have", unexpected),
        ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"{folder}: cannot load the checkpoint; " + "; ".join(problems))


def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - _LISTED} more)" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
