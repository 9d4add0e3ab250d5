"""Where a model runs and in what precision: one resolver for every command, the chat panel and
the Python API, so `--device cuda:1` means the same thing (and fails the same way) everywhere.

The user says `auto|cpu|cuda[:N]|mps`, `auto|float32|bfloat16|float16` and `none|int8` (flags,
or `CTVQA_DEVICE` / `CTVQA_DTYPE` / `CTVQA_QUANTIZE`); `Runtime` keeps what was asked and
resolves it against this machine and the checkpoint only when a model is loaded.

Why `auto` chooses what it chooses (figures in docs/devices.md, from bench/cpu_dtype.py):
- CUDA when present, in bfloat16 (float16 on GPUs without bf16): the M3D checkpoints are stored
  in bf16 and a GPU runs it at full speed.
- Otherwise the CPU. There a small float32 model (the embedded default) is as fast in float32 as
  in bfloat16 and float32 gives its trained answers exactly, while a 4B-class checkpoint stored
  in bf16 decodes and prefills about twice as fast in bf16 on a CPU with native bf16 (AVX512-BF16,
  AMX) and is no more faithful in float32 than the bf16 weights it was published as. So the CPU
  keeps the checkpoint's own dtype when it is bf16 (or fp16) and the CPU has native bf16, and
  uses float32 otherwise (float16 matrix products are slow on CPUs).

torch is imported inside the resolving functions only: the chat panel parses and shows these
options in napari's process, which never loads torch (the model runs in its own process).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV_DEVICE = "CTVQA_DEVICE"
ENV_DTYPE = "CTVQA_DTYPE"
ENV_QUANTIZE = "CTVQA_QUANTIZE"
DEVICE_HELP = "auto|cpu|cuda[:N]|mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_MODES = ("none", "int8")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_INDEXED_SINGLE = re.compile(r"^(cpu|mps):\d+$")  # what torch.device prints for them; there is only one
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX, Arm BF16 (cpuinfo names)


class DeviceError(ValueError):
    """A device, dtype or quantization the user asked for is malformed or not on this machine."""


@dataclass(frozen=True)
class Runtime:
    """What the user asked for (normalised, not yet resolved against the machine)."""

    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"

    @classmethod
    def from_options(cls, device: str | None = None, dtype: str | None = None,
                     quantize: str | None = None) -> Runtime:
        """Options given (None: the environment variable, else `auto` / `none`), checked for form."""
        device = (device or os.environ.get(ENV_DEVICE) or "auto").strip().lower()
        dtype = (dtype or os.environ.get(ENV_DTYPE) or "auto").strip().lower()
        quantize = (quantize or os.environ.get(ENV_QUANTIZE) or "none").strip().lower()
        dtype = _DTYPE_ALIASES.get(dtype.removeprefix("torch."), dtype.removeprefix("torch."))
        if _INDEXED_SINGLE.match(device):
            device = device.partition(":")[0]
        if not _DEVICE_PATTERN.match(device):
            raise DeviceError(f"device {device!r} is not one of {DEVICE_HELP}")
        if dtype not in DTYPES:
            raise DeviceError(f"dtype {dtype!r} is not one of {'|'.join(DTYPES)}")
        if quantize not in QUANTIZE_MODES:
            raise DeviceError(f"quantize {quantize!r} is not one of {'|'.join(QUANTIZE_MODES)}")
        return cls(device, dtype, quantize)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self, device: torch.device, stored: torch.dtype | None = None) -> torch.dtype:
        return resolve_dtype(self.dtype, device, stored, self.quantize)

    def check(self) -> torch.device:
        """Fail now (before a slow load) when the device is absent or cannot run the dtype."""
        device = self.torch_device()
        if self.dtype != "auto":
            self.torch_dtype(device)
        return device


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """`auto` = the first CUDA GPU when there is one, else the CPU; an absent device is an error."""
    import torch

    spec = Runtime.from_options(device=None if spec is None else str(spec)).device
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("device 'mps' is not available: Apple-silicon GPUs need macOS 12.3+ and a torch "
                              "built with MPS; use --device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU or driver was found"
        raise DeviceError(f"device {spec!r} is not available: {why}; use --device cpu (or auto)")
    index = int(spec.partition(":")[2] or torch.cuda.current_device())
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {spec!r} is not available: this machine has {count} CUDA GPU(s), "
                          f"cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device, stored: torch.dtype | None = None,
                  quantize: str = "none") -> torch.dtype:
    """The compute dtype on `device`; `stored` is the checkpoint's own dtype (None: unknown)."""
    import torch

    spec = Runtime.from_options(dtype=None if spec is None else str(spec)).dtype
    if spec == "auto":
        return auto_dtype(device, stored, quantize)
    dtype = getattr(torch, spec)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{device} has no bfloat16 support; use --dtype float16 or float32")
    return dtype


def auto_dtype(device: torch.device, stored: torch.dtype | None = None, quantize: str = "none") -> torch.dtype:
    """The rule of the module docstring (int8 weights on a CPU: bf16 activations where native,
    since the layers int8 leaves alone run faster in bf16 and the 4B model then needs 12.8 GiB
    instead of 19.7; docs/devices.md)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if (quantize != "none" or stored in (torch.bfloat16, torch.float16)) and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux cpuinfo: x86 `flags`, Arm `Features`; none where unknown):
    what decides the dtype here and the int8 kernel's activation range in quantize.py."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    return frozenset(flag for line in text.splitlines() if line.startswith(("flags", "Features"))
                     for flag in line.partition(":")[2].split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (False where unknown)."""
    return bool(cpu_flags() & _NATIVE_BF16_FLAGS)


def available_devices() -> list[str]:
    """The devices this machine can run a model on (for the chat panel's menu)."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def describe(device: torch.device, dtype: torch.dtype, quantize: str = "none") -> str:
    """`cpu, bfloat16, int8` style: what the chat panel and the logs show beside the model's name."""
    parts = [str(device), str(dtype).removeprefix("torch.")]
    if quantize != "none":
        parts.append(f"{quantize} weights")
    return ", ".join(parts)
