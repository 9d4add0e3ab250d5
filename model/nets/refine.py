"""A second look at a located box, at the model input's own resolution.

Why: the box head (nets.findings.FindingBoxes) reads the stem's map, whose cells are 4x8x8
voxels of the model input; a 10-26 mm nodule is one or two of them, and an IoU of 0.5 in 3-D
needs each side within about a fifth of its length. The session-16 model found 5-14 % of the
held-out nodules that well and 47-67 % of the consolidations, against 85-100 % for the heart and
the effusions, which span many cells. The refiner crops the input around the head's box (twice
its size, and never finer than the input's voxels), and a small 3-D CNN reads the lesion's edges
there and writes the box again, in the crop's coordinates.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.nets.conv import Conv3d

CROP = (16, 32, 32)  # voxels of the crop the CNN reads (z, y, x)
MARGIN = 2.0  # the crop spans this many times the located box


def crop_windows(boxes: torch.Tensor, image_size: Sequence[int], crop: Sequence[int] = CROP,
                 margin: float = MARGIN) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres and extents (N, 3 each, 0-1 over the input, z y x) of the crops around (N, 6)
    boxes (lo z y x, hi z y x): `margin` times the box, and at least `crop` input voxels, so a
    small box is read at the input's resolution rather than interpolated finer."""
    boxes = boxes.float()
    centre = (boxes[:, :3] + boxes[:, 3:]) / 2
    least = torch.tensor([c / s for c, s in zip(crop, image_size)], dtype=torch.float32, device=boxes.device)
    extent = torch.maximum((boxes[:, 3:] - boxes[:, :3]).clamp_min(0.0) * margin, least)
    return centre, extent


def crop_volumes(images: torch.Tensor, centre: torch.Tensor, extent: torch.Tensor,
                 crop: Sequence[int] = CROP) -> torch.Tensor:
    """(N, 1, D, H, W) inputs, or one (1, 1, D, H, W) input for every window, to (N, 1, *crop)
    crops of the windows (zero beyond the volume, as the input's air is)."""
    n = len(centre)
    theta = torch.zeros(n, 3, 4, dtype=torch.float32, device=centre.device)
    for row in range(3):  # grid_sample's coordinates are (x, y, z): the input's (z, y, x) reversed
        theta[:, row, row] = extent[:, 2 - row]
        theta[:, row, 3] = 2 * centre[:, 2 - row] - 1
    grid = F.affine_grid(theta, [n, 1, *crop], align_corners=False)
    source = images.float().expand(n, -1, -1, -1, -1) if len(images) == 1 else images.float()
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def window_targets(truth: torch.Tensor, centre: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """What the refiner writes for (N, 6) true boxes in those windows: the centre's offset in
    half extents, then the log of the size over the extent (z y x each)."""
    truth = truth.float()
    size = (truth[:, 3:] - truth[:, :3]).clamp_min(1e-4)
    return torch.cat((((truth[:, :3] + truth[:, 3:]) / 2 - centre) / (extent / 2), torch.log(size / extent)), dim=1)


def window_boxes(out: torch.Tensor, centre: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """`window_targets` undone: (N, 6) outputs to boxes, 0-1 over the input."""
    mid = centre + out[:, :3] * extent / 2
    half = out[:, 3:].clamp(-6.0, 2.0).exp() * extent / 2
    return torch.cat((mid - half, mid + half), dim=1).clamp(0.0, 1.0)


class BoxRefiner(nn.Module):
    """Per refined finding, a box from a crop of the input around the box head's box."""

    def __init__(self, image_size: Sequence[int], n_findings: int, channels: int = 16) -> None:
        super().__init__()
        if n_findings < 1:
            raise ValueError(f"a box refiner needs at least one finding, got {n_findings}")
        self.image_size = tuple(int(v) for v in image_size)
        self.n_findings, self.channels = n_findings, channels
        layers: list[nn.Module] = []
        # the first layer halves the crop in plane only (z voxels are the coarse ones already): a
        # layer at the crop's full resolution made a training step eight times slower
        widths = [(1, channels, (1, 2, 2)), (channels, 2 * channels, 2), (2 * channels, 4 * channels, 2),
                  (4 * channels, 4 * channels, 2)]
        for inputs, outputs, stride in widths:
            layers += [Conv3d(inputs, outputs, 3, stride=stride, padding=1), nn.GroupNorm(4, outputs), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        cells = 4 * channels * (CROP[0] // 8) * (CROP[1] // 16) * (CROP[2] // 16)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cells, 128), nn.GELU(), nn.Linear(128, 6 * n_findings))

    def keep(self, slots: Sequence[int]) -> BoxRefiner:
        """A refiner for these of its findings only, with their trained weights."""
        kept = BoxRefiner(self.image_size, len(slots), self.channels)
        rows = torch.tensor([6 * s + k for s in slots for k in range(6)])
        with torch.no_grad():
            kept.convs.load_state_dict(self.convs.state_dict())
            kept.head[1].load_state_dict(self.head[1].state_dict())
            kept.head[3].weight.copy_(self.head[3].weight[rows])
            kept.head[3].bias.copy_(self.head[3].bias[rows])
        return kept

    def forward(self, crops: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(N, 1, *CROP) crops and each one's finding slot to (N, 6) window outputs (window_targets)."""
        out = self.head(self.convs(crops)).reshape(len(crops), self.n_findings, 6)
        return out[torch.arange(len(crops), device=crops.device), slots]

    @torch.no_grad()
    def refine(self, images: torch.Tensor, boxes: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """One (1, 1, D, H, W) input (or one per box) and (N, 6) located boxes of the findings in
        `slots` to the refined boxes, 0-1 over the input."""
        weight = self.head[3].weight  # the model's device and dtype (bf16 on a GPU); boxes in float32
        centre, extent = crop_windows(boxes.to(images.device), self.image_size)
        crops = crop_volumes(images, centre, extent).to(weight.dtype)
        return window_boxes(self(crops, slots.to(images.device)).float(), centre, extent)
