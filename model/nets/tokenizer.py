"""The embedded default model's own tokenizer: a byte-level BPE trained on the project's text.

A published tokenizer (Llama's 32k, Phi-3's) would make the embedding and output layers of a
few-million-parameter model larger than the rest of it, and would need a download. A vocabulary
of a few thousand pieces trained on the synthetic reports and QA (plus, when present, the 3D-RAD
test questions, so the real benchmark's wording is not shredded into bytes) is small and fits the
domain. Pieces may span words (no whitespace pre-split), so the fixed phrases of the 3D-RAD
templates and choices become a few tokens each: sequences are about three times shorter, which
is most of the training and generation cost of a small model. Digits are split one by one so
measurements ("23x18 mm") and prior sequences ("[0, 1, 1]") are read digit by digit.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from model.data.qa_folders import read_qa_folder
from model.inference import prompts

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
REPORT_COLUMNS = ("ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")


def _report_cells(path: Path) -> Iterator[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            for column in REPORT_COLUMNS:
                text = (row.get(column) or "").strip()
                if text:
                    yield text


def _qa_texts(qa_dir: Path) -> Iterator[str]:
    """Each question as the model will read it (prompt with choices) and its target answer."""

    for items in read_qa_folder(qa_dir).values():
        for item in items:
            yield prompts.format_prompt(item.question, item.choices if item.closed else None)
            yield prompts.format_target(item.answer, item.answer_choice)


def corpus_texts(cohort_dir: str | Path, rad_test_dir: str | Path | None = None) -> Iterator[str]:
    """The report sections and training-split QA of a synthetic cohort (`ctvqa synth` layout),
    then the 3D-RAD test split's questions and answers when `rad_test_dir` is given."""
    cohort_dir = Path(cohort_dir)
    reports = cohort_dir / "reports.csv"
    if not reports.is_file():
        raise FileNotFoundError(f"{reports} not found: pass a folder written by `ctvqa synth`")
    yield from _report_cells(reports)
    yield from _qa_texts(cohort_dir / "qa" / "train")
    if rad_test_dir is not None:
        yield from _qa_texts(Path(rad_test_dir))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000) -> Any:
    """A `PreTrainedTokenizerFast` with BOS/EOS/PAD/UNK and LaMed's added tokens
    (`<im_patch>`, `<bx_start>`, `<bx_end>` special, `[SEG]` plain), trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (256 bytes + specials)")
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [prompts.IMAGE_TOKEN, prompts.BOX_START, prompts.BOX_END]}
    )
    tokenizer.add_tokens([prompts.SEG_TOKEN])
    return tokenizer


def build_tokenizer(cohort_dir: str | Path, out_dir: str | Path, vocab_size: int = 4000,
                    rad_test_dir: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on a cohort (and 3D-RAD test text if that folder exists), save in Hugging Face format
    to `out_dir`, and return the tokenizer with a provenance record for the model card."""
    used_rad = rad_test_dir is not None and Path(rad_test_dir).is_dir()
    texts = list(corpus_texts(cohort_dir, rad_test_dir if used_rad else None))
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(str(out_dir))
    info = {"vocab_size": len(tokenizer), "texts": len(texts), "used_3drad_test": used_rad,
            "3drad_test_dir": str(rad_test_dir) if used_rad else None}
    return tokenizer, info
