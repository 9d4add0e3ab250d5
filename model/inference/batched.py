"""Many questions about one volume at once: what makes `ctvqa evaluate` fast at benchmark scale.

Every prompt about a volume starts with the same BOS + image tokens, so their KV cache
(`VLM.prefix_cache`) is computed once and repeated over the batch; only the question parts differ.
- Closed questions: every choice of every question in the batch is one row of ONE forward pass
  (question + `"{letter}. {choice}"`, right-padded), scored like `VLM.score_choices` (softmax over
  a question's choices of the mean log-likelihood of its target tokens). When that pass shows
  greedy decoding would write one of the choices and stop, that is the answer's text, with no
  generation (most closed answers).
- Open (and closed) answers: greedy decoding over the batch with the question parts padded on
  the left, between the shared image prefix and the question, masked out; position ids follow the
  mask, so every row sees the positions it would see alone; a row that has ended leaves the batch.
The figures equal one-question-at-a-time answers up to float rounding in the batched matrix
products (the tests check the metrics come out identical).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.inference import prompts
from model.inference.asked import question_view
from model.inference.kv_cache import growing_copy
from model.inference.locate import located_answer, located_finding
from model.inference.vlm import VLM, Answer, PreparedImage


@dataclass(frozen=True)
class Question:
    """One question to answer in a batch: its text and, for closed questions, its choices."""

    text: str
    choices: tuple[str, ...] | None = None


def _question_ids(vlm: VLM, prepared: PreparedImage, question: Question) -> list[int]:
    """The prompt's ids after BOS + image tokens (the part that differs between questions); as many
    image tokens as this prepared image has (a slice has fewer than a volume)."""
    ids = vlm.prompt_ids(vlm.build_prompt(question.text, question.choices), prepared.num_tokens)
    return ids[0, prepared.num_tokens + 1:].tolist()


def _prefix(vlm: VLM, prepared: PreparedImage, rows: int, spare: int) -> tuple[object, torch.Tensor]:
    """The image prefix's KV cache repeated over `rows` with room for `spare` more tokens per row
    (kv_cache.py), and its ids (BOS + image tokens)."""
    cache = growing_copy(vlm.prefix_cache(prepared), spare)
    cache.batch_repeat_interleave(rows)
    ids = [vlm.tokenizer.bos_token_id] + [vlm.image_token_id] * prepared.num_tokens
    return cache, torch.tensor([ids] * rows, dtype=torch.long, device=vlm.device)


def generate_batch(vlm: VLM, prepared: PreparedImage, question_ids: Sequence[list[int]],
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy new token ids per question, its end token included (what `VLM.decode_answer` reads).

    A row leaves the batch as soon as it writes an end token, its cache rows with it: `generate`
    computes every row until the batch's longest answer ends, and the open answers of one batch
    differ by tens of tokens (a measurement against an anomaly description)."""
    width = max(len(q) for q in question_ids)
    pad = vlm.pad_token_id
    cache, prefix = _prefix(vlm, prepared, len(question_ids), width + max_new_tokens)
    body = torch.tensor([[pad] * (width - len(q)) + q for q in question_ids], dtype=torch.long, device=vlm.device)
    mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in question_ids], dtype=torch.long,
                        device=vlm.device)
    attention = torch.cat([torch.ones_like(prefix), mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, prefix.shape[1]:]
    eos = set(vlm.eos_ids())
    written: list[list[int]] = [[] for _ in question_ids]
    alive = list(range(len(question_ids)))
    with torch.inference_mode():
        logits = vlm.model(input_ids=body, attention_mask=attention, position_ids=positions, past_key_values=cache,
                           logits_to_keep=1).logits[:, -1]
        last = positions[:, -1]
        for step in range(max_new_tokens):
            tokens = logits.argmax(-1)
            for row, token in zip(alive, tokens.tolist()):
                written[row].append(token)
            keep = [k for k, token in enumerate(tokens.tolist()) if token not in eos]
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=vlm.device)
                cache.reorder_cache(index)
                attention, last, tokens = attention[index], last[index], tokens[index]
                alive = [alive[k] for k in keep]
            last = last + 1
            attention = torch.cat([attention, attention.new_ones((len(alive), 1))], dim=1)
            logits = vlm.model(input_ids=tokens[:, None], attention_mask=attention, position_ids=last[:, None],
                               past_key_values=cache).logits[:, -1]
    return written


def score_choices_batch(vlm: VLM, prepared: PreparedImage, question_ids: Sequence[list[int]],
                        choices: Sequence[Sequence[str]], max_new_tokens: int | None = None
                        ) -> list[tuple[dict[str, float], list[int] | None]]:
    """Per question, the softmax over its offered choices of the mean log-likelihood of each
    `"{letter}. {choice}"` after its prompt, as `VLM.score_choices` computes it: the questions'
    cache (all tokens but the last) in one forward pass, then every choice of every question,
    from its question's last token, in a second one.

    With each, the greedy answer when that pass already shows it: when every token of one choice's
    target is the most likely next token after the ones before it, and an end-of-sequence token
    is the most likely after the last, greedy decoding writes exactly that target and stops
    (`generate` would compute the same logits one token at a time), so the question needs no
    generation. None when no choice is the greedy path or it would pass `max_new_tokens`."""
    rows: list[tuple[int, str, list[int]]] = []  # question index, letter, last question token + target
    for k, (q, offered) in enumerate(zip(question_ids, choices)):
        for letter, text in prompts.listed_choices(offered):
            target = vlm.tokenizer(prompts.format_target(text, letter), add_special_tokens=False)["input_ids"]
            rows.append((k, letter, [q[-1], *target]))
    pad = vlm.pad_token_id
    width = max(len(q) for q in question_ids) - 1  # the questions but their last tokens, left-padded
    cache, prefix = _prefix(vlm, prepared, len(question_ids), width + max(len(r[2]) for r in rows))
    start = prefix.shape[1]
    head_mask = torch.tensor([[0] * (width - len(q) + 1) + [1] * (len(q) - 1) for q in question_ids],
                             dtype=torch.long, device=vlm.device)
    with torch.inference_mode():
        if width > 0:
            head = torch.tensor([[pad] * (width - len(q) + 1) + q[:-1] for q in question_ids], dtype=torch.long,
                                device=vlm.device)
            attention = torch.cat([torch.ones_like(prefix), head_mask], dim=1)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, start:]
            vlm.model(input_ids=head, attention_mask=attention, position_ids=positions, past_key_values=cache,
                      logits_to_keep=1)
        cache.reorder_cache(torch.tensor([r[0] for r in rows], device=vlm.device))
        length = max(len(r[2]) for r in rows)
        body = torch.tensor([r[2] + [pad] * (length - len(r[2])) for r in rows], dtype=torch.long, device=vlm.device)
        valid = torch.tensor([[1] * len(r[2]) + [0] * (length - len(r[2])) for r in rows], dtype=torch.long,
                             device=vlm.device)
        attention = torch.cat([torch.ones(len(rows), start, dtype=torch.long, device=vlm.device),
                               head_mask[[r[0] for r in rows]], valid], dim=1)
        first = torch.tensor([start + len(question_ids[r[0]]) - 1 for r in rows], device=vlm.device)
        positions = first[:, None] + torch.arange(length, device=vlm.device)[None]
        logits = vlm.model(input_ids=body, attention_mask=attention, position_ids=positions,
                           past_key_values=cache).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, body[:, 1:, None])[..., 0]
        target = valid[:, 1:].float()
        mean = (logp * target).sum(1) / target.sum(1)
        best = logits.argmax(-1).tolist()
    eos = set(vlm.eos_ids())
    results: list[tuple[dict[str, float], list[int] | None]] = []
    for k in range(len(question_ids)):
        members = [n for n, r in enumerate(rows) if r[0] == k]
        probs = torch.softmax(mean[members], dim=0)
        greedy = None
        for n in members:
            ids = rows[n][2]
            ends = best[n][len(ids) - 1]
            if best[n][:len(ids) - 1] == ids[1:] and ends in eos and (max_new_tokens is None or len(ids) <= max_new_tokens):
                greedy = [*ids[1:], ends]
        results.append(({rows[n][1]: float(p) for n, p in zip(members, probs)}, greedy))
    return results


def _by_rows(closed: list[int], questions: Sequence[Question], rows: int) -> list[list[int]]:
    """Closed questions grouped so that a forward pass holds at most `rows` choice rows (a question's
    choices always together): the image prefix's cache is repeated once per row."""
    groups: list[list[int]] = []
    used = rows
    for k in closed:
        n = len(prompts.listed_choices(questions[k].choices))
        if used + n > rows:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += n
    return groups


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def answer_batch(vlm: VLM, prepared: PreparedImage, questions: Sequence[Question], max_new_tokens: int = 64,
                 batch_size: int = 32) -> list[Answer]:
    """`VLM.answer` for many questions about one prepared volume, in batches of `batch_size`
    (closed and open questions in separate batches, each sorted by prompt length so that a batch
    pads little; choice scoring at most `batch_size` rows, or one question's choices, per forward
    pass); answers in input order.

    Why closed and open apart: most closed answers are read off the scoring pass and need no
    decoding, and the rest are a few tokens where an open one is dozens; batched apart, each kind's
    batches are full of rows alike."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    views = [question_view(vlm.model, prepared, q.text) for q in questions]
    if any(view is not prepared for view in views):  # an asked-finding readout: a batch per finding asked
        answers_by_view: list[Answer | None] = [None] * len(questions)
        for view in {id(v): v for v in views}.values():
            members = [k for k, v in enumerate(views) if v is view]
            for k, answer in zip(members, answer_batch(vlm, view, [questions[k] for k in members],
                                                       max_new_tokens, batch_size)):
                answers_by_view[k] = answer
        return answers_by_view  # type: ignore[return-value]
    findings = [None if prepared.slice_index is not None else located_finding(vlm.model, q.text) for q in questions]
    answers: list[Answer | None] = [None if f is None else Answer(**located_answer(vlm, prepared, f)) for f in findings]
    ids = [_question_ids(vlm, prepared, q) for q in questions]
    closed = [bool(prompts.listed_choices(q.choices)) for q in questions]
    order = sorted((k for k in range(len(questions)) if answers[k] is None), key=lambda k: (len(ids[k]), k))
    chunks = [chunk for kind in (False, True) for chunk in _chunks([k for k in order if closed[k] == kind], batch_size)]
    for chunk in chunks:
        scored: dict[int, dict[str, float]] = {}
        written: dict[int, list[int]] = {}  # greedy answers the scoring pass already shows
        for group in _by_rows([k for k in chunk if closed[k]], questions, batch_size):
            for k, (scores, greedy) in zip(group, score_choices_batch(
                    vlm, prepared, [ids[k] for k in group], [questions[k].choices for k in group], max_new_tokens)):
                scored[k] = scores
                if greedy is not None:
                    written[k] = greedy
        rest = [k for k in chunk if k not in written]
        if rest:
            written.update(zip(rest, generate_batch(vlm, prepared, [ids[k] for k in rest], max_new_tokens)))
        for k in chunk:
            scores = scored.get(k)
            choice = max(scores, key=scores.__getitem__) if scores else None
            answers[k] = Answer(**vlm.decode_answer(prepared, written[k]), choice=choice, choice_scores=scores)
    return answers  # type: ignore[return-value]
