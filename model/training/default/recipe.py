"""Train the embedded default model from nothing: `make default-model` (synthetic cohort, then this script).

The default model exists so that the tool answers questions out of the box with no download. It
is the published LaMed architecture at a size that trains on two CPU cores in well under an
hour, on the project's synthetic cohort only (it has never seen a real patient). Steps:

1. a synthetic cohort made beforehand by `ctvqa synth` (patient-level train/valid split; `model`
   never imports `annotation`, so `make default-model` runs the two steps);
2. every volume's model input computed once into a tensor cache, so epochs never re-read NIfTI;
3. the project's own tokenizer (`model.nets.tokenizer`);
4. stage 1, alignment: the vision tower and projector learn the 18 CT-RATE labels from the image
   through an auxiliary label head on the pooled projected features (dropped at save); this is
   M3D's alignment at our scale (M3D starts from a CLIP-pretrained encoder; ours starts from
   nothing, and a direct label signal teaches a small ViT far faster than a language loss);
   stage 2, instruction tuning: the vision tower is frozen and its tokens cached, the projector
   and a language model trained from scratch learn all six 3D-RAD tasks (closed answers as
   `"{letter}. {answer}"`) plus the reports' impressions, the label head kept as a second loss.
   Rare answers are sampled more often (inverse square root of their frequency in a task).
5. the held-out evaluation (`model.evaluation.evaluate.evaluate_vlm` on the valid patients), `eval.json`
   and the model card, written from the same figures.

Everything is seeded and the data order is drawn from one generator, so a rerun on the same
machine repeats the run; the step counts are fixed (a wall-clock cap only stops a slow machine
early, keeping the best checkpoint so far, and the card then says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
RAD_TEST_DIR = REPO.parent / "shared" / "data" / "3d-rad" / "test"
CAPTION_QUESTION = "What are the main findings of this chest CT?"
CACHE_NAME = "model_inputs_{split}_{d}x{h}x{w}.pt"
# One synthetic cohort: (seed, phantom grid Z,Y,X, patients).
Cohort = tuple[int, tuple[int, int, int], int]
# Training cohorts at the three phantom sizes users meet (each keeps `ctvqa synth`'s chest field of
# view, so their spacings differ), most patients at the smallest (cheapest) size.
TRAIN_COHORTS: tuple[Cohort, ...] = ((0, (64, 192, 192), 800), (1, (64, 256, 256), 300), (2, (96, 320, 320), 150))
# Held-out evaluation: seeds never used in training, one cohort per size, every patient held out.
HELDOUT_COHORTS: tuple[Cohort, ...] = ((100, (64, 192, 192), 30), (101, (64, 256, 256), 30),
                                       (102, (96, 320, 320), 30))
HELDOUT_VALID_FRAC = 0.95
CLOSED_TASK_LETTERS = {"existence_detection": "AB", "static_temporal_diagnosis": "ABCD",
                       "longitudinal_temporal_diagnosis": "ABCD"}
# Stage-2 task mix per step: closed tasks (the acceptance targets) a little more often.
TASK_WEIGHTS = {"image_observation": 1.0, "anomaly_detection": 1.0, "medical_computation": 1.0,
                "existence_detection": 1.6, "static_temporal_diagnosis": 1.4,
                "longitudinal_temporal_diagnosis": 2.0, "caption": 0.3, "box": 1.0}
BOX_DIGITS = 2  # box answers as 0.12: a voxel of the model input is about 0.01 of its extent


@dataclass
class Recipe:
    """Every size and hyperparameter of one training run (stored with the model as provenance)."""

    seed: int = 0
    cohorts: tuple[Cohort, ...] = TRAIN_COHORTS
    heldout: tuple[Cohort, ...] = HELDOUT_COHORTS
    valid_frac: float = 0.1  # of the training cohorts' patients: checkpoint selection only
    image_size: tuple[int, int, int] = (32, 128, 128)
    patch_size: tuple[int, int, int] = (8, 16, 16)
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 2
    vision_mlp: int = 512
    vision_stem: int = 16  # channels of the convolutional stem (0: M3D's linear patch embedding)
    vision_stem_depth: int = 1  # 1: six convolutions to a quarter of the token grid's stride (vision.ConvStem)
    finding_readout: bool = True  # the stem's per-finding map added to the LM's image tokens (nets.findings)
    finding_tokens: bool = False  # ... and one more image token per finding, its calibrated logit (nets.findings): tried
    calibrated_readout: bool = True  # ... its logits through per-finding scales fitted at stage 2's start (nets.findings)
    asked_readout: bool = True  # ... and one more image token: the asked finding's (nets.findings)
    stem_steps: int = 12000  # stage 0: the stem's detectors on lesion-centred crops (stage0.py); 0 = none
    stem_crop: tuple[int, int, int] = (16, 64, 64)  # crop of the model input (voxels)
    stem_images: int = 16  # crops per step
    stem_positive: float = 0.6  # share of crops centred on a lesion
    stem_pos_weight: float = 3.0  # lesion cells count this many times (the crops are balanced already)
    stem_lr: float = 2e-3
    lm_hidden: int = 256
    lm_layers: int = 3
    lm_heads: int = 4
    lm_intermediate: int = 512
    vocab_size: int = 4000
    stage1_steps: int = 2500
    stage2_steps: int = 5000
    stage1_images: int = 8
    paired: bool = True  # every step's volumes are pairs of one patient's scans (data.paired_volumes)
    dense_weight: float = 1.0  # stage-1 per-label lesion-box targets on the stem's feature map (stage1.DenseHead)
    dense_pos_weight: float = 10.0  # lesion cells are rare: each counts this many times
    # stages 0-1 dense targets on each part of a many-part lesion (data.lesion_boxes), not its whole box, which for
    # calcified spots is mostly normal tissue; needs cohorts made with per-part boxes; tried, not kept (docs/synthetic_cohort.md)
    dense_parts: bool = False
    pair_weight: float = 1.0  # stage-1 rank loss within those pairs (stage1.pair_rank_loss)
    stage2_images: int = 16  # many images per step: how the LM learns that answers depend on the image
    focus_steps: int = 400  # stage 2 starts on balanced existence questions so the LM must read the image
    seen_questions: int = 2  # afterwards, per image, so that reading is not unlearnt among the other tasks
    seen_auc: float = 0.7  # ... about the findings the stage-1 tower sees this well (held-out label AUC)
    seen_readout: bool = True  # ... or at the finding readout's maximum (stage1.readout_auc)
    own_frequency_tasks: tuple[str, ...] = ("static_temporal_diagnosis",)  # answers drawn at their own frequency
    balance_presence: bool = True  # ... but as often about a seen finding present now as absent (data.Sampler)
    questions_per_image: int = 3
    # stage 2 starts its projector, readout embeddings and label head afresh (seeded): it then depends on stages
    # 0-1 only through the frozen tower and readout head, so `--tower-from` a saved model gives the same run
    stage2_fresh: bool = False  # (`--stage2-fresh`; `--tower-from` sets it)
    lr: float = 1e-3
    warmup_steps: int = 30
    aux_weight: float = 1.0
    head_lr_scale: float = 1.0  # tried 10 (with head_norm): the heads then fit fast, held-out labels did not improve
    head_norm: bool = False
    input_norm: bool = True  # train the tower on standardised inputs, folded into its weights after stage 1
    balance_labels: bool = False  # stage-1 label loss weighs present cases by sqrt(absent/present)
    patch_weight: float = 5.0  # per-patch targets are sparse: their mean BCE is small
    validate_every: int = 200
    auc_every: int = 1000  # stage-1 steps between held-out label AUC checks (printed and logged)
    checkpoint_every: int = 200  # steps between resumable checkpoints (model/training/default/checkpoint.py)
    validation_questions: int = 160
    eval_limit: int | None = 150
    held_out_finding: str | None = None  # a variant never asked about this label (the feedback demonstration)
    box_steps: int = 3000  # stage 3: the box head on the final stem's features (stage3.py); 0 = the LM writes boxes
    box_cells: int = 48  # cells sampled per lesion for it
    box_context: int = 1  # 1: the head reads each cell's 3x3x3 neighbourhood of stem features (FindingBoxes)
    box_refine_steps: int = 1500  # ... then a second look at the input around each box (refine.py); 0 = none
    box_refine_crops: int = 8  # crops per training lesion for it, each around a differently missed box
    stage1_minutes: float = 45.0  # wall-clock caps: a slow machine stops early with the best so far
    stage2_minutes: float = 45.0  # the asked finding's token makes a step slower (one KV prefix per finding asked)

    def text_config(self, tokenizer: Any) -> dict[str, Any]:
        return dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=self.lm_hidden,
            intermediate_size=self.lm_intermediate, num_hidden_layers=self.lm_layers,
            num_attention_heads=self.lm_heads, num_key_value_heads=self.lm_heads,
            max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )


def cohort_folder(root: Path, cohort: Cohort, heldout: bool = False) -> Path:
    """Where `make default-model` writes one cohort: `train-64x192x192-seed0`, `heldout-...`."""
    seed, size, _ = cohort
    return root / f"{'heldout' if heldout else 'train'}-{'x'.join(str(n) for n in size)}-seed{seed}"


def recipe_from_record(stored: dict[str, Any]) -> Recipe:
    """The Recipe a training.json records (JSON turned its tuples into lists)."""
    def cohorts(rows: list) -> tuple[Cohort, ...]:
        return tuple((int(s), tuple(int(n) for n in size), int(p)) for s, size, p in rows)  # type: ignore[misc]
    fixed = {k: tuple(stored[k]) for k in ("image_size", "patch_size", "stem_crop", "own_frequency_tasks")
             if k in stored}
    # records from before these fields existed were trained without them
    fixed.update({k: stored.get(k, v) for k, v in (("finding_readout", False), ("seen_readout", False),
                                                         ("balance_presence", False), ("dense_parts", False),
                                                         ("finding_tokens", False), ("stage2_fresh", False),
                                                         ("calibrated_readout", False), ("asked_readout", False),
                                                         ("box_steps", 0), ("box_context", 0),
                                                         ("box_refine_steps", 0))})
    fixed.setdefault("own_frequency_tasks", ())
    fixed.update(cohorts=cohorts(stored["cohorts"]), heldout=cohorts(stored["heldout"]))
    return Recipe(**{**stored, **fixed})
