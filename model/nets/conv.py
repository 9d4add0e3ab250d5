"""A 3-D convolution that always takes oneDNN's kernel on a CPU.

Why: torch chooses between oneDNN and its generic im2col kernel with a rule written for 2-D
images: one image whose first four sizes multiply to at most 20,480 goes to im2col. For a single
3-D volume that is (batch, channels, depth, height), so the middle layers of the convolutional
stem took the generic path, 3-8x slower (the stem's 32-channel layer at 16x32x32: 34 ms against
4 ms on 2 threads; the whole stem 53 -> 17 ms), with an im2col buffer of 56 MB. Batches of
several volumes (training) already took oneDNN. Results differ only in float rounding (1e-6
relative). Float32 only: oneDNN's bfloat16 convolution is fast only where the CPU has bf16
instructions.
"""
from __future__ import annotations

import torch
from torch import nn


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` (same weights and names) through `torch.mkldnn_convolution` on CPU float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)
