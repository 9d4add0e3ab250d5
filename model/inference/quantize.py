"""Opt-in weight-only int8 for the language model: half the bytes a 4B model reads per token.

Decoding on a CPU is bound by memory bandwidth (every weight is read once per token), so
storing the language model's linear weights as int8 with one scale per output row, and keeping
activations in the compute dtype, roughly doubles tokens/s over bf16 at a small accuracy cost
(bench/real_checkpoint.py measures both: tokens/s and top-1 token / closed-choice agreement).

Why torch's own kernel and not torchao: torchao 0.18's `quantize_(m, Int8WeightOnlyConfig())`
converts the int8 weight back to the activation dtype on every call in eager mode, which
measured 8x *slower* than bf16 on this project's 2-core CPU (it relies on torch.compile to fuse
it); `torch._weight_int8pack_mm`, the aten kernel for exactly this product on CPUs, reads the
int8 weight directly and measured about 2x faster than bf16. Where that kernel is missing (e.g. a
GPU build without it), the weight is dequantized per call: same answers, memory saved, no speed-up.

The vision tower and projector are left alone: they run once per volume over 2048 tokens, where
a dense matrix product in the compute dtype is faster than an int8 matrix-vector kernel.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

QUANTIZED_ROOT = "language_model"


def has_int8_kernel(device: torch.device) -> bool:
    """Whether aten's weight-only int8 kernel exists for this device type in this torch build."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", key)


class Int8WeightOnlyLinear(nn.Module):
    """A frozen `nn.Linear` whose weight is int8 (symmetric, per output row) times a float32 scale."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(qweight.shape[1]), int(qweight.shape[0])
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._kernel = has_int8_kernel(qweight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
        return cls(qweight, scale, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (for code that inspects `.weight`; the forward never builds it)."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        if self._kernel and rows.device.type == self.qweight.device.type:
            out = torch._weight_int8pack_mm(rows.contiguous(), self.qweight, self.scale.to(rows.dtype))
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        else:
            out = F.linear(rows, self.weight.to(rows.dtype), None if self.bias is None else self.bias.to(rows.dtype))
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_weights(model: nn.Module, mode: str = "int8", root: str = QUANTIZED_ROOT) -> int:
    """Replace every `nn.Linear` under `model.<root>` (lm_head included) in place, one at a time so
    peak memory stays near the unquantized model's; returns how many were replaced."""
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
            setattr(owner, leaf, Int8WeightOnlyLinear.from_linear(linear))
            del linear
    return len(targets)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8WeightOnlyLinear) for m in model.modules())
