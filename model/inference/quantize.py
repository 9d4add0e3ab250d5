"""Opt-in int8 weights for the language model: a quarter of float32's bytes, half of bf16's.

Decoding on a CPU is bound by memory bandwidth (every weight is read once per token), so storing
the language model's linear weights as int8 with one scale per output row roughly doubles
tokens/s over bf16 (bench/real_checkpoint.py measures it, with top-1 token and closed-choice
agreement).

Which kernel multiplies, and why (figures in docs/devices.md):
- On an x86 CPU: fbgemm's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`), integer
  dot products (VNNI) on int8 weights and activations quantized on the fly. It beat aten's
  weight-only `_weight_int8pack_mm` per layer (about 1.4x) and in prefill, where the weight-only
  kernel is slower than bf16. Its activation scale is one per call; each row is divided by its
  own peak first and multiplied back after, so every token gets its own scale (per-token
  quantization, as int8 LLM inference does) and one outlier token cannot coarsen the others.
  Without VNNI the activations keep 7 bits (`reduce_range`), as fbgemm requires there.
- Elsewhere (a GPU, an Arm CPU, a torch without fbgemm): `_weight_int8pack_mm` where the device
  has it, activations in the compute dtype; else the weight is dequantized per call (same answers,
  memory saved, no speed-up).
torchao 0.18's `Int8WeightOnlyConfig` was measured first and rejected: in eager mode it converts
the weight back to bf16 on every call, 8x slower than bf16 on this project's 2-core CPU.

The vision tower and projector are left alone: they run once per volume over 2048 tokens, where
a dense matrix product in the compute dtype is faster than an int8 matrix-vector kernel.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from model.inference.devices import cpu_flags

QUANTIZED_ROOT = "language_model"
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
KERNELS = ("fbgemm", "int8pack", "dequantize")


def has_int8_kernel(device: torch.device) -> bool:
    """Whether aten's weight-only int8 kernel exists for this device type in this torch build."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", key)


def has_fbgemm(device: torch.device) -> bool:
    """Whether fbgemm's dynamic int8 linear runs here (x86 CPUs; not Arm, not GPUs)."""
    return (device.type == "cpu" and torch.backends.quantized.engine in ("x86", "fbgemm")
            and hasattr(torch.ops.quantized, "linear_dynamic"))


def best_kernel(device: torch.device) -> str:
    """What multiplies int8 weights on this device: `fbgemm`, `int8pack` or `dequantize` (the
    module docstring says why, in that order)."""
    return "fbgemm" if has_fbgemm(device) else "int8pack" if has_int8_kernel(device) else "dequantize"


def cpu_has_vnni() -> bool:
    """Whether int8 dot products accumulate without 16-bit saturation (False where unknown)."""
    return bool(cpu_flags() & _VNNI_FLAGS)


def _prepack(qweight: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """fbgemm's packed form of an int8 weight with one scale per output row (no bias: the forward
    rescales rows, which a bias inside the kernel would not survive)."""
    with warnings.catch_warnings():  # quantized tensors are deprecated; this op still takes one
        warnings.simplefilter("ignore", UserWarning)
        zero = torch.zeros(qweight.shape[0], dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(weight, None)


class Int8Linear(nn.Module):
    """A frozen `nn.Linear` whose weight is int8 (symmetric, per output row) times a float32 scale."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 kernel: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(qweight.shape[1]), int(qweight.shape[0])
        self.kernel = kernel or best_kernel(qweight.device)
        if self.kernel not in KERNELS:
            raise ValueError(f"int8 kernel {self.kernel!r} is not one of {'|'.join(KERNELS)}")
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._reduce_range = not cpu_has_vnni()
        self._packed = _prepack(qweight, scale) if self.kernel == "fbgemm" else None
        if self._packed is None:  # fbgemm keeps its own copy; the other kernels read this one
            self.register_buffer("qweight", qweight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str | None = None) -> Int8Linear:
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
        return cls(qweight, scale, linear.bias, kernel)

    def int8_weight(self) -> torch.Tensor:
        """The stored int8 weight, (out_features, in_features)."""
        if self._packed is None:
            return self.qweight
        return torch.ops.quantized.linear_unpack(self._packed)[0].int_repr()

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (for code that inspects `.weight`; the forward never builds it)."""
        return self.int8_weight().to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        if self._packed is not None:
            rows = rows.float()
            peak = rows.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            out = torch.ops.quantized.linear_dynamic(rows / peak, self._packed, self._reduce_range) * peak
            out = out.to(x.dtype)
        elif self.kernel == "int8pack":
            out = torch._weight_int8pack_mm(rows.contiguous(), self.qweight, self.scale.to(rows.dtype))
        else:
            out = F.linear(rows, self.weight.to(rows.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights ({self.kernel})"


def quantize_weights(model: nn.Module, mode: str = "int8", root: str = QUANTIZED_ROOT,
                     kernel: str | None = None) -> int:
    """Replace every `nn.Linear` under `model.<root>` (lm_head included) in place, one at a time so
    peak memory stays near the unquantized model's; returns how many were replaced. `kernel`
    (default: `best_kernel`) lets a benchmark set one kernel against another."""
    if mode == "none":
        return 0
    if mode != "int8":
        raise ValueError(f"quantize {mode!r} is not one of none|int8")
    parent = model.get_submodule(root) if root else model
    targets = [(name, module) for name, module in parent.named_modules() if isinstance(module, nn.Linear)]
    if not targets:
        raise ValueError(f"{type(model).__name__}.{root} has no linear layers to quantize")
    with torch.no_grad():
        for name, linear in targets:
            owner_name, _, leaf = name.rpartition(".")
            owner = parent.get_submodule(owner_name) if owner_name else parent
            setattr(owner, leaf, Int8Linear.from_linear(linear, kernel))
            del linear
    return len(targets)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
