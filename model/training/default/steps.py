"""Parts both training stages share: the network at the recipe's size, losses, the label head,
the learning-rate schedule and one clipped optimiser step.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.inference import prompts
from model.nets.lamed import LamedConfig, LamedForCausalLM
from model.training.default.data import Example
from model.training.default.recipe import Recipe


# ----- model ------------------------------------------------------------------------------------
def build_model(recipe: Recipe, tokenizer: Any, finding_names: Sequence[str] = ()) -> Any:
    """The untrained model of `recipe`; with `recipe.finding_readout` its stem's map is read out
    for `finding_names` (the cohort's labels, in the dataset's order: nets.findings)."""
    config = LamedConfig(
        text_config=recipe.text_config(tokenizer), image_size=list(recipe.image_size),
        patch_size=list(recipe.patch_size), mm_hidden_size=recipe.vision_hidden,
        vision_num_layers=recipe.vision_layers, vision_num_heads=recipe.vision_heads,
        vision_mlp_dim=recipe.vision_mlp, vision_stem_channels=recipe.vision_stem,
        vision_stem_depth=recipe.vision_stem_depth,
        vision_finding_names=list(finding_names) if recipe.finding_readout else [],
        vision_finding_tokens=recipe.finding_readout and recipe.finding_tokens,
        vision_finding_calibrated=recipe.finding_readout and recipe.calibrated_readout,
        vision_finding_asked=recipe.finding_readout and recipe.asked_readout,
    )
    torch.manual_seed(recipe.seed)
    model = LamedForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model



def _text_batch(tokenizer: Any, examples: Sequence[Example], targets: Sequence[list[int]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + target ids right-padded, their mask, and per position the id to predict next
    (-100 where nothing is scored): the part of each sequence after BOS + image tokens."""
    targets = targets if targets is not None else [e.target_ids for e in examples]
    rows = [e.prompt_ids + t for e, t in zip(examples, targets)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    next_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    for k, (row, target) in enumerate(zip(rows, targets)):
        ids[k, : len(row)] = torch.tensor(row)
        mask[k, : len(row)] = 1
        next_ids[k, len(row) - len(target) - 1 : len(row) - 1] = torch.tensor(target)
    return ids, mask, next_ids



def answer_logits(model: Any, tokenizer: Any, features: torch.Tensor, examples: Sequence[Example],
                  owners: Sequence[int], targets: Sequence[list[int]] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the answer tokens of each example, the ids they should predict, and each one's row.

    BOS + image features run once per image and their KV cache is shared by all of that image's
    questions (the M3D prompt puts the image first), which halves the language model's work; the
    output layer runs on the answer positions alone. With an asked-finding readout the image's last
    token is the example's own (nets.findings.select_asked): it opens the example's part."""
    lm = model.language_model
    embed = model.get_input_embeddings()
    shared = features
    if getattr(model.config, "vision_finding_asked", False):
        shared = features[:, : model.num_image_tokens - 1]
    bos = embed(torch.full((features.shape[0], 1), tokenizer.bos_token_id, dtype=torch.long))
    prefix = torch.cat((bos, shared.to(bos.dtype)), dim=1)
    cache = lm.model(inputs_embeds=prefix, use_cache=True).past_key_values
    owned = torch.tensor(list(owners), dtype=torch.long)
    cache.batch_select_indices(owned)
    ids, mask, next_ids = _text_batch(tokenizer, examples, targets)
    text = embed(ids)
    if shared is not features:
        own = model.select_asked(features[owned], [e.asked for e in examples])[:, -1:]
        text = torch.cat((own.to(text.dtype), text), dim=1)
        mask = torch.cat((torch.ones((len(examples), 1), dtype=torch.long), mask), dim=1)
        next_ids = torch.cat((torch.full((len(examples), 1), -100, dtype=torch.long), next_ids), dim=1)
    full_mask = torch.cat((torch.ones((len(examples), prefix.shape[1]), dtype=torch.long), mask), dim=1)
    hidden = lm.model(inputs_embeds=text, attention_mask=full_mask, past_key_values=cache,
                      use_cache=True).last_hidden_state
    scored = next_ids != -100
    rows = torch.arange(len(examples))[:, None].expand_as(next_ids)[scored]
    return lm.lm_head(hidden[scored]).float(), next_ids[scored], rows



def lm_loss(model: Any, tokenizer: Any, features: torch.Tensor, examples: Sequence[Example],
            owners: Sequence[int]) -> torch.Tensor:
    """Next-token loss on the answer tokens (and EOS) only."""
    logits, wanted, _ = answer_logits(model, tokenizer, features, examples, owners)
    return F.cross_entropy(logits, wanted)



class LabelHead(nn.Module):
    """Auxiliary 18-label classifier on mean+max pooled image features (training only).

    The projected features are small (LM embedding scale, std ~0.03) and at initialisation differ
    between volumes by a tenth of that, so the plain head hardly moves; `normalise` (batch norm)
    puts that difference at unit scale and lets the head fit quickly (an option: within our
    budget it did not make the held-out labels learnable either)."""

    def __init__(self, hidden: int, n_labels: int, normalise: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(2 * hidden) if normalise else nn.Identity()
        self.linear = nn.Linear(2 * hidden, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(torch.cat((features.mean(1), features.amax(1)), dim=-1)))



class TowerCache:
    """The frozen vision tower's tokens (and finding logits) of every volume, computed once for
    stage 2, which trains what reads them."""

    @torch.no_grad()
    def __init__(self, model: Any, pixels: torch.Tensor, batch: int = 16) -> None:
        model.vision.eval()
        parts = [model.vision.tower(pixels[k : k + batch].float()) for k in range(0, len(pixels), batch)]
        model.vision.train()
        self.tokens = torch.cat([tokens for tokens, _ in parts])
        self.findings = None if parts[0][1] is None else torch.cat([findings for _, findings in parts])

    def features(self, model: Any, volumes: Any) -> torch.Tensor:
        """LM-ready image features of `volumes` (indices or a slice) through the model's projector."""
        return model.vision.project(self.tokens[volumes], None if self.findings is None else self.findings[volumes])



@torch.no_grad()
def choice_accuracy(model: Any, tokenizer: Any, cache: TowerCache, examples: Sequence[Example]) -> dict[str, float]:
    """Closed-question accuracy per task and overall ("all") by mean answer log-likelihood (the rule
    of `VLM.score_choices`), from cached tower tokens: the cheap check that keeps the best
    checkpoint during training."""
    model.eval()
    correct: Counter = Counter()
    asked: Counter = Counter()
    for e in examples:
        features = cache.features(model, slice(e.volume, e.volume + 1))
        letters = prompts.CHOICE_LETTERS[: len(e.choices)]
        targets = [tokenizer(prompts.format_target(text, letter), add_special_tokens=False)["input_ids"]
                   for letter, text in zip(letters, e.choices)]
        logits, wanted, rows = answer_logits(model, tokenizer, features, [e] * len(targets), [0] * len(targets), targets)
        logp = torch.log_softmax(logits, -1).gather(-1, wanted[:, None])[:, 0]
        mean = torch.zeros(len(targets)).index_add_(0, rows, logp) / torch.bincount(rows, minlength=len(targets))
        hit = letters[int(mean.argmax())] == e.answer_class
        for key in (e.task, "all"):
            correct[key] += hit
            asked[key] += 1
    model.train()
    return {key: round(100.0 * correct[key] / asked[key], 2) for key in asked}



# ----- training ---------------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))



def make_optimiser(model_parameters: list, head_parameters: list, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; the training-only heads learn `head_lr_scale` times faster, so that from the first
    steps their gradient carries the labels back into the vision tower instead of noise."""
    groups = [{"params": model_parameters, "base_lr": recipe.lr},
              {"params": head_parameters, "base_lr": recipe.lr * recipe.head_lr_scale}]
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=0.01)



def identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float()



def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small shifts (up to 1x4x4 voxels) and contrast changes (+-5%): the same phantom never looks
    identical twice, while left/right and lobes stay where they are."""
    out = torch.empty_like(pixels)
    for k in range(len(pixels)):
        shifts = [int(torch.randint(-m, m + 1, (1,), generator=generator)) for m in (1, 4, 4)]
        gain = 1.0 + 0.1 * (float(torch.rand((1,), generator=generator)) - 0.5)
        out[k] = torch.roll(pixels[k], shifts=shifts, dims=(1, 2, 3)).mul(gain).clamp(0, 1)
    return out



class Clock:
    """Progress lines with the time left, and the per-stage wall-clock cap."""

    def __init__(self, stage: str, steps: int, minutes: float, spent: float = 0.0) -> None:
        """`spent`: seconds this stage already ran before a resume (they count against the cap)."""
        self.stage, self.steps = stage, steps
        self.start = time.perf_counter() - spent
        self.deadline = self.start + minutes * 60

    def over(self) -> bool:
        return time.perf_counter() > self.deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def show(self, step: int, **losses: float) -> None:
        elapsed = self.elapsed()
        left = elapsed / step * (self.steps - step)
        figures = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        print(f"[train] {self.stage} step {step}/{self.steps} {figures} "
              f"elapsed {elapsed / 60:.1f} min, about {left / 60:.1f} min left", flush=True)



def set_lr(optimiser: torch.optim.Optimizer, factor: float) -> None:
    """Scale every parameter group's own base rate (the label heads run at a multiple of it)."""
    for group in optimiser.param_groups:
        group["lr"] = group["base_lr"] * factor



def optimiser_step(optimiser: torch.optim.Optimizer, loss: torch.Tensor, parameters: list) -> None:
    """One clipped optimiser step on `loss`, the same in both stages."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimiser.step()


def fit_on_samples(module: nn.Module, count: int, batch: int, steps: int, seed: int, name: str, recipe: Recipe,
                   clock: Clock, loss_of: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
                   ) -> list[dict[str, Any]]:
    """Stage 3's small heads on cached samples: `steps` AdamW steps at the stem's rate, each on
    `batch` of the `count` samples drawn by a seeded generator, which `loss_of(pick, generator)`
    may draw from too (augmentation), so a resumed or repeated run draws the same."""
    optimiser = torch.optim.AdamW([{"params": list(module.parameters()), "base_lr": recipe.stem_lr}],
                                  lr=recipe.stem_lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    log = []
    module.train()
    for step in range(1, steps + 1):
        set_lr(optimiser, lr_factor(step - 1, steps, recipe.warmup_steps))
        pick = torch.randint(count, (min(batch, count),), generator=generator)
        loss = loss_of(pick, generator)
        optimiser_step(optimiser, loss, list(module.parameters()))
        if step == 1 or step % 100 == 0 or step == steps:
            log.append({"step": step, name: round(loss.item(), 4)})
        if step % 500 == 0 or step == steps:
            clock.show(step, **{name: loss.item()})
    module.eval()
    return log
