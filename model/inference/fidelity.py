"""How faithfully a cheaper way of running a model (another dtype, int8 weights) answers like the
reference way: the accuracy half of every speed figure in docs/devices.md.

Two measures on a fixed prompt set, both against the reference model's own answers (not against
ground truth: the question is "does it still say the same thing", not "is it right"):
- top-1 token agreement: the reference's greedy answer is fed to both models (teacher forcing),
  and at every answer position the candidate's most likely next token is compared with the
  reference's. Teacher forcing keeps one early difference from counting every later token.
- closed-choice agreement: the share of closed questions where both pick the same letter by
  the same likelihood read-out `VLM.answer` uses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from model.inference.asked import question_view
from model.inference.vlm import VLM


@dataclass(frozen=True)
class Prompt:
    """One fixed question: a model input (1, D, H, W) in [0, 1], the text, optional choices."""

    image: torch.Tensor
    question: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of answer tokens where the candidate's argmax equals the reference's
    n_tokens: int
    choice: float | None  # share of closed questions answered with the same letter (None: no closed ones)
    n_closed: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"top1_agreement": self.top1, "tokens": self.n_tokens, "choice_agreement": self.choice,
                "closed_questions": self.n_closed}


def _prepared(vlm: VLM, p: Prompt) -> Any:
    """The prompt's image as its question takes it (inference.asked)."""
    return question_view(vlm.model, vlm.prepare(p.image), p.question)


def _answer_logits(vlm: VLM, p: Prompt, prompt_ids: torch.Tensor, answer_ids: list[int]) -> torch.Tensor:
    """Next-token logits at the positions that predict each answer token (teacher-forced)."""
    ids = torch.tensor([prompt_ids[0].tolist() + answer_ids], device=vlm.device)
    features = _prepared(vlm, p).features
    with torch.inference_mode():
        logits = vlm.model(input_ids=ids, image_features=features).logits[0].float()
    start = prompt_ids.shape[1] - 1
    return logits[start:start + len(answer_ids)]


def reference_answers(reference: VLM, prompts: Sequence[Prompt], max_new_tokens: int = 16) -> list[dict]:
    """Per prompt: the reference's greedy answer ids (`max_new_tokens` long, so short answers
    still give tokens to compare), its own teacher-forced argmax ids and its letter.
    Plain data, so a benchmark can compute it in one process and compare in another."""
    results = []
    for p in prompts:
        answer = reference.answer(p.image, p.question, choices=list(p.choices) if p.choices else None,
                                  max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        ids = list(answer.token_ids[:max_new_tokens]) or [reference.tokenizer.eos_token_id]
        prompt_ids = reference.prompt_ids(reference.build_prompt(p.question, p.choices))
        top1 = _answer_logits(reference, p, prompt_ids, ids).argmax(-1).tolist()
        results.append({"answer_ids": ids, "top1": top1, "choice": answer.choice})
    return results


def agreement(candidate: VLM, prompts: Sequence[Prompt], reference: list[dict]) -> Agreement:
    """Top-1 token and closed-choice agreement of `candidate` with `reference_answers(...)` of the
    same prompts (see the module docstring); same checkpoint, so same tokenizer and prompt style."""
    same = total = same_choice = closed = 0
    for p, ref in zip(prompts, reference, strict=True):
        prompt_ids = candidate.prompt_ids(candidate.build_prompt(p.question, p.choices))
        got = _answer_logits(candidate, p, prompt_ids, ref["answer_ids"]).argmax(-1).tolist()
        same += sum(int(a == b) for a, b in zip(got, ref["top1"], strict=True))
        total += len(got)
        if p.choices:
            closed += 1
            scores = candidate.score_choices(_prepared(candidate, p), prompt_ids, p.choices)
            same_choice += int(max(scores, key=scores.__getitem__) == ref["choice"])
    return Agreement(same / max(total, 1), total, same_choice / closed if closed else None, closed)


QUESTIONS = (
    ("Is there a pleural effusion?", ("Yes", "No")),
    ("Where is the largest lung nodule?", ("Right upper lobe", "Left upper lobe", "Right lower lobe", "Left lower lobe")),
    ("Describe the findings in the lungs.", None),
    ("Is the heart enlarged?", ("Yes", "No")),
    ("What abnormality is seen in the mediastinum?", None),
    ("Compared with the prior scan, is the consolidation new, stable or resolved?", ("New", "Stable", "Resolved")),
    ("Is there arterial wall calcification?", ("Yes", "No")),
    ("Measure the largest nodule.", None),
)


def fixed_prompts(image_size: Sequence[int], n_images: int = 2, seed: int = 0) -> list[Prompt]:
    """The benchmark's fixed prompt set: the questions above over `n_images` seeded smooth volumes
    (random-weight checkpoints cannot read a real CT anyway; trained ones get the same set)."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n_images):
        coarse = torch.rand(1, 1, *(max(2, s // 8) for s in image_size), generator=generator)
        images.append(torch.nn.functional.interpolate(coarse, size=tuple(image_size), mode="trilinear")[0])
    return [Prompt(image, q, c) for image in images for q, c in QUESTIONS]
