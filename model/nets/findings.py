"""The finding readout: per-finding logits on the convolutional stem's feature map, added to the
language model's image tokens.

Why: the stem's detectors, trained on lesion-centred crops (the default model's stage 0), tell a
lymph node, an emphysema cluster or a bronchiectatic airway from the anatomy far better than the
ViT's pooled tokens pass on (held-out per-scan AUC 0.75-0.85 at the map against 0.52-0.57 at the
tokens). A small finding is a few cells of the map; through 256 tokens, a spatial mean over 2x2x2
of them and an MLP, its signal is diluted before the language model sees it. Here the map's
maximum within each image token's region, and over the whole volume, are embedded and added to
the projected features: the language model reads "is there a nodule, and where" directly, and an
answer about a finding cannot come from the question's wording alone.

Finding tokens (`tokens=True`): one more image token per finding, its identity plus its
whole-volume logit through a per-finding scale and shift. Why: added to every grid token, the 18
probabilities share each token's 256 dimensions with the anatomy, and the language model read only
those that swing from 0 to 1 (effusion, heart size); arterial calcification, whose readout moves
from 0.43 absent to 0.80 present, stayed at chance balanced accuracy even when asked about it
balanced (the session-7 model). A token of its own, found by the finding's name in the question,
with the logit calibrated per finding, gives every finding the same legible signal.

Calibration (`calibrated=True`): every logit through its finding's scale and shift before the
sigmoid, fitted at the start of stage 2 as a logistic regression of the labels on the scan's
maximum. Why: the same mid-range separation, but in the grid tokens everyone reads rather than
in 18 tokens the language model must tell apart by name (the session-14 run confused findings
whose names share words). Tried in session 15 on another stage 1 than the shipped model's and
not kept: arterial calcification rose to 76-83 balanced accuracy, and against that stage 1's own
control the macro figure rose by 1-7 points, but stayed below the shipped model's (the model
card's "what was tried").

The asked finding's token (`asked=True`): one image token after the grid's, the token of the
finding the question names (`select_asked`; the last, "none", when it names none). Why: with a
token per finding the language model had to find the asked one among 18 by name, and confused
findings whose names share words; here the question's words choose it before the language model
runs, as the evaluation reads the finding a question asks about (`finding_asked`), so the answer
reads one calibrated logit at a fixed place.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.nets.conv import Conv3d


class FindingTokens(nn.Module):
    """One image token per finding: its learnt identity plus its whole-volume logit through a
    per-finding scale and shift (calibrated: the same logit can mean present for one finding and
    absent for another)."""

    def __init__(self, n_findings: int, out_dim: int) -> None:
        super().__init__()
        self.identity = nn.Parameter(torch.zeros(n_findings, out_dim))
        self.scale = nn.Parameter(torch.ones(n_findings))
        self.shift = nn.Parameter(torch.zeros(n_findings))
        self.presence = nn.Linear(2, out_dim)

    def init_parameters(self, std: float) -> None:
        """Distinct names with an uncalibrated (identity) logit; `presence` is an ordinary Linear."""
        with torch.no_grad():
            self.identity.normal_(0.0, std)
            self.scale.fill_(1.0)
            self.shift.zero_()

    def forward(self, whole: torch.Tensor) -> torch.Tensor:
        """(B, findings) whole-volume logits to (B, findings, out_dim) tokens."""
        calibrated = whole * self.scale + self.shift
        value = torch.stack((torch.sigmoid(calibrated), calibrated.clamp(-8.0, 8.0) / 8.0), dim=-1)
        return self.identity + self.presence(value)


class Calibration(nn.Module):
    """Per finding, `logit * scale + shift` (an identity until fitted)."""

    def __init__(self, n_findings: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_findings))
        self.shift = nn.Parameter(torch.zeros(n_findings))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, findings, ...) logits, calibrated per finding."""
        shape = (1, -1) + (1,) * (logits.dim() - 2)
        return logits * self.scale.view(shape) + self.shift.view(shape)


class FindingReadout(nn.Module):
    """`head`: a 1x1x1 convolution to one logit per finding on the feature map; `local` and
    `whole` embed the probabilities (per image token's region, and over the volume) into the LM's
    hidden size; `tokens` (optional) gives each finding a token of its own; `calibrated`
    (optional) puts each finding's logits through its own scale and shift first."""

    def __init__(self, feature_channels: int, n_findings: int, feature_grid: Sequence[int],
                 token_grid: Sequence[int], out_dim: int, tokens: bool = False, calibrated: bool = False,
                 asked: bool = False) -> None:
        super().__init__()
        if n_findings < 1:
            raise ValueError(f"a finding readout needs at least one finding, got {n_findings}")
        if tokens and asked:
            raise ValueError("a readout gives a token per finding or the asked finding's token, not both")
        if any(int(f) % int(t) for f, t in zip(feature_grid, token_grid)):
            raise ValueError(f"feature map {tuple(feature_grid)} does not tile into image tokens {tuple(token_grid)}")
        self.token_grid = tuple(int(t) for t in token_grid)
        self.window = tuple(int(f) // int(t) for f, t in zip(feature_grid, token_grid))
        self.head = Conv3d(feature_channels, n_findings, 1)
        self.local = nn.Linear(n_findings, out_dim)
        self.whole = nn.Linear(n_findings, out_dim)
        self.asked = asked
        self.tokens = FindingTokens(n_findings + int(asked), out_dim) if tokens or asked else None  # + "none"
        self.calibration = Calibration(n_findings) if calibrated else None

    def embedders(self) -> list[nn.Module]:
        """What turns the head's logits into language-model inputs: stage 2 trains these on a
        frozen head."""
        return [module for name, module in self.named_children() if name != "head"]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, d, h, w) stem features to (B, findings, d, h, w) logits."""
        return self.head(features)

    def embed(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """(B, findings, d, h, w) logits to (B, image tokens, out_dim), in the projector's token
        order (depth-major). A max over reshaped windows, not max_pool3d, so it also runs in
        bfloat16 on a CPU. `calibrated` False: without the calibration (what stage 1 reads)."""
        if self.calibration is not None and calibrated:
            logits = self.calibration(logits)
        b, n = logits.shape[:2]
        (d, h, w), (p, q, r) = self.token_grid, self.window
        local = logits.reshape(b, n, d, p, h, q, w, r).amax(dim=(3, 5, 7)).flatten(2).transpose(1, 2)
        whole = logits.flatten(2).amax(-1)
        return self.local(torch.sigmoid(local)) + self.whole(torch.sigmoid(whole))[:, None]

    def maximum(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, findings, d, h, w) logits to each finding's maximum over the volume (B, findings),
        calibrated where the readout is: the quantity the calibration was fitted on."""
        whole = logits.flatten(2).amax(-1)
        return whole if self.calibration is None else self.calibration(whole)

    def embed_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, findings, d, h, w) logits to the finding tokens (B, findings, out_dim), from their
        `maximum`; with `asked`, one more: the "none" token, from a logit of 0."""
        whole = self.maximum(logits)
        if self.asked:
            whole = torch.cat((whole, whole.new_zeros(whole.shape[0], 1)), dim=1)
        return self.tokens(whole)


def select_asked(features: torch.Tensor, asked: Sequence[int | None], n_findings: int) -> torch.Tensor:
    """(B or 1, grid + findings + 1, H) image features of an asked-finding readout to the (len(asked),
    grid + 1, H) a prompt takes: each row's grid tokens and the token of the finding its question
    names (readout index), or the last ("none") where it names none."""
    grid = features.shape[1] - n_findings - 1
    if grid < 1 or any(k is not None and not 0 <= k < n_findings for k in asked):
        raise ValueError(f"asked findings {list(asked)} do not fit {tuple(features.shape)} features of "
                         f"{n_findings} findings")
    if features.shape[0] == 1 and len(asked) > 1:
        features = features.expand(len(asked), -1, -1)
    elif features.shape[0] != len(asked):
        raise ValueError(f"{features.shape[0]} image feature sets for {len(asked)} asked findings")
    slots = torch.tensor([grid + (n_findings if k is None else k) for k in asked], device=features.device)
    chosen = features[torch.arange(len(asked), device=features.device), slots]
    return torch.cat((features[:, :grid], chosen[:, None]), dim=1)


class FindingBoxes(nn.Module):
    """Where a finding is, as a box: per cell of the stem's map and per located finding, the offset
    (in cells) from the cell's centre to the box's centre and the box's log size (in cells).

    Why not the language model: it reads 32 image tokens, each an 8x32x32-voxel region of the
    model input, and written from those a nodule's or a consolidation's box lands nowhere near it
    (the shipped model of session 8: IoU >= 0.5 for none of them, against 95-100 % for effusions
    and hearts, which fill whole tokens). The finding readout marks the finding's cells at eight
    times the tokens' resolution in plane; the box is read off the cells around its peak."""

    def __init__(self, feature_channels: int, n_findings: int, hidden: int = 64, context: int = 0) -> None:
        """`context` 1: each cell also reads its 26 neighbours (a 3x3x3 first layer), which tell
        where within the cell a finding smaller than one cell lies."""
        super().__init__()
        if n_findings < 1:
            raise ValueError(f"a box head needs at least one finding, got {n_findings}")
        if context not in (0, 1):
            raise ValueError(f"a box head's context is 0 or 1 cells, got {context}")
        self.n_findings, self.context = n_findings, context
        self.net = nn.Sequential(Conv3d(feature_channels, hidden, 1 + 2 * context, padding=context), nn.GELU(),
                                 Conv3d(hidden, 6 * n_findings, 1))

    def keep(self, slots: Sequence[int]) -> FindingBoxes:
        """A head for these of its findings only, with their trained weights."""
        kept = FindingBoxes(self.net[0].in_channels, len(slots), self.net[0].out_channels, self.context)
        rows = torch.tensor([6 * s + k for s in slots for k in range(6)])
        with torch.no_grad():
            kept.net[0].load_state_dict(self.net[0].state_dict())
            kept.net[2].weight.copy_(self.net[2].weight[rows])
            kept.net[2].bias.copy_(self.net[2].bias[rows])
        return kept

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, d, h, w) stem features to (B, findings, 6, d, h, w): centre offset (z, y, x),
        then log size (z, y, x), in cells."""
        b, _, d, h, w = features.shape
        return self.net(features).reshape(b, self.n_findings, 6, d, h, w)


def box_from_map(logits: torch.Tensor, boxes: torch.Tensor, reach: int = 1) -> tuple[float, ...]:
    """One finding's box in the model input's 0-1 coordinates from its readout logits (d, h, w)
    and box head output (6, d, h, w): each cell within `reach` of the peak proposes a box,
    weighed by its probability, so one noisy cell does not decide it."""
    grid = logits.shape
    peak = [int(i) for i in torch.unravel_index(torch.argmax(logits.float()), grid)]
    window = tuple(slice(max(0, p - reach), min(g, p + reach + 1)) for p, g in zip(peak, grid))
    weight = torch.sigmoid(logits[window].float()).flatten()
    cells = torch.stack(torch.meshgrid(*[torch.arange(s.start, s.stop, dtype=torch.float32) + 0.5
                                         for s in window], indexing="ij")).flatten(1)  # (3, cells)
    near = boxes[(slice(None), *window)].float().flatten(1)  # (6, cells)
    centre, half = cells + near[:3], near[3:].clamp(-8.0, 8.0).exp() / 2
    proposals = torch.cat([centre - half, centre + half])  # (6, cells), in cells
    box = (proposals * weight).sum(1) / weight.sum().clamp_min(1e-6)
    size = torch.tensor([*grid, *grid], dtype=torch.float32)
    return tuple(float(v) for v in (box / size).clamp(0.0, 1.0))
