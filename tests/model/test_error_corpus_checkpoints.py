"""Hostile checkpoint corpus (issue 19): weight files generated here (pickles that would run
code, truncated and corrupt safetensors, missing, extra and wrong-shaped tensors, in our own
folder layout and in the published M3D-LaMed one) must each be refused with a CheckpointError
that names the file and, where there is one, the tensor; never torch's traceback or its advice to
load with weights_only=False, and never a model with a layer left random."""
from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.inference.loading import load_vlm
from model.nets.published import CheckpointError
from tests.model.test_checkpoints import write_m3d_folder

MARKER = "ctvqa-pickle-ran"


class RunsCode:
    """What a malicious pickle does: call something on load."""

    def __init__(self, call: Callable, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self):  # noqa: ANN204
        return self.call, self.args


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _save(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _as_bin(folder: Path, extra: dict[str, object]) -> Path:
    state: dict[str, object] = dict(_weights(folder))
    state.update(extra)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def _cut(folder: Path, keep: Callable[[int], int]) -> Path:
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep(len(data))])
    return file


def _header_len(folder: Path) -> int:
    return struct.unpack("<Q", (folder / "model.safetensors").read_bytes()[:8])[0]


def _first(folder: Path, k: int = 0) -> str:
    return sorted(_weights(folder))[k]


def _drop(folder: Path) -> tuple[Path, str]:
    tensors = _weights(folder)
    name = sorted(tensors)[2]
    del tensors[name]
    _save(folder, tensors)
    return folder, name


def _reshape(folder: Path) -> tuple[Path, str]:
    tensors = _weights(folder)
    name = sorted(tensors)[4]
    tensors[name] = torch.zeros(2, 3)
    _save(folder, tensors)
    return folder / "model.safetensors", name


def _extra(folder: Path) -> tuple[Path, str]:
    tensors = _weights(folder)
    tensors["vision.surprise.weight"] = torch.zeros(4)
    _save(folder, tensors)
    return folder / "model.safetensors", "vision.surprise.weight"


def _corrupt_header(folder: Path) -> tuple[Path, str | None]:
    file = folder / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:12] = b"!!!!"
    file.write_bytes(bytes(data))
    return file, None


def _offsets(folder: Path) -> tuple[Path, str]:
    file = folder / "model.safetensors"
    data = file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[0]
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 4]
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return file, name


# (name, how to break a copy of our tiny model folder -> (file, tensor or None), words)
OWN_CASES: list[tuple[str, Callable[[Path], tuple[Path, str | None]], list[str]]] = [
    ("pickle calling os.system", lambda d: (_as_bin(d, {"x": RunsCode(os.system, f"touch {d}/{MARKER}")}), None),
     ["refused", "system"]),
    ("pickle calling exec", lambda d: (_as_bin(d, {"x": RunsCode(exec, f"open('{d}/{MARKER}', 'w')")}), None),
     ["refused", "exec"]),
    ("pickle calling eval", lambda d: (_as_bin(d, {"x": RunsCode(eval, "1+1")}), None), ["refused", "eval"]),
    ("pickle with an arbitrary object", lambda d: (_as_bin(d, {"x": RunsCode(shutil.rmtree, "/nonexistent")}), None),
     ["refused", "rmtree"]),
    ("pickle of a list, not a state dict", lambda d: (_list_bin(d), None), ["not a state dict"]),
    ("truncated pytorch_model.bin", lambda d: (_cut_bin(d), None), ["truncated or corrupt"]),
    ("empty pytorch_model.bin", lambda d: (_empty_bin(d), None), ["truncated or corrupt"]),
    ("safetensors cut in the data", lambda d: (_cut(d, lambda n: n // 2), "?"), ["truncated", "tensor"]),
    ("safetensors cut by one byte", lambda d: (_cut(d, lambda n: n - 1), "?"), ["truncated", "tensor"]),
    ("safetensors cut in the header", lambda d: (_cut(d, lambda n: 8 + _header_len(d) // 2), None), ["truncated"]),
    ("safetensors of 5 bytes", lambda d: (_cut(d, lambda n: 5), None), ["not a safetensors file"]),
    ("empty safetensors", lambda d: (_cut(d, lambda n: 0), None), ["not a safetensors file"]),
    ("corrupt safetensors header", _corrupt_header, ["corrupt safetensors header"]),
    ("header offsets that do not match", _offsets, ["do not match"]),
    ("a tensor missing", _drop, ["missing tensors"]),
    ("a tensor of the wrong shape", _reshape, ["(2, 3)", "the model expects"]),
    ("an unexpected tensor", _extra, ["the model does not have"]),
]


def _list_bin(folder: Path) -> Path:
    path = _as_bin(folder, {})
    torch.save([torch.zeros(2), torch.ones(2)], path)
    return path


def _cut_bin(folder: Path) -> Path:
    path = _as_bin(folder, {})
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _empty_bin(folder: Path) -> Path:
    path = _as_bin(folder, {})
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("name, breaks, words", OWN_CASES, ids=[c[0] for c in OWN_CASES])
def test_our_folder_corpus(tiny_vlm_dir: Path, tmp_path: Path, name: str, breaks, words: list[str]) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_vlm_dir, folder)
    file, tensor = breaks(folder)
    with pytest.raises(CheckpointError) as info:
        load_vlm(folder)
    message = str(info.value)
    assert str(file) in message or (str(folder) in message and file.name in message), message
    if tensor == "?":
        assert "tensor " in message
    elif tensor is not None:
        assert tensor in message
    for word in words:
        assert word in message, (word, message)
    assert "weights_only=False" not in message and "Traceback" not in message
    assert len(message.splitlines()) == 1
    assert not (folder / MARKER).exists()  # the pickle's code never ran


def test_published_folder_shape_and_truncation_name_the_shard_and_tensor(tmp_path: Path) -> None:
    write_m3d_folder(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name = "model.layers.0.mlp.down_proj.weight"
    shard = tmp_path / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError) as info:
        load_vlm(tmp_path)
    assert f"{name} in {shard.name} is (3, 3)" in str(info.value)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated: tensor") as info:
        load_vlm(tmp_path)
    assert str(shard) in str(info.value)


def test_published_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    write_m3d_folder(tmp_path)
    state: dict[str, object] = {}
    for shard in sorted(tmp_path.glob("model-*.safetensors")):
        state.update(load_file(str(shard)))
        shard.unlink()
    (tmp_path / "model.safetensors.index.json").unlink()
    state["lm_head.weight"] = RunsCode(os.system, f"touch {tmp_path}/{MARKER}")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused") as info:
        load_vlm(tmp_path)
    assert str(tmp_path / "pytorch_model.bin") in str(info.value) and "weights_only=False" not in str(info.value)
    assert not (tmp_path / MARKER).exists()
