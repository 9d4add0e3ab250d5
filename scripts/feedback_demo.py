"""Feedback demonstration: curators teach the model a question it answers wrongly, in minutes on CPU.

    python scripts/feedback_demo.py                      # base: the embedded default model
    python scripts/feedback_demo.py --base PATH --steps 150 --workdir .bench-tmp/feedback-demo

The default model was trained on 3D-RAD's existence questions ("Is {label} present on the CT
scan?"). The new wording asks the opposite: "Is the CT scan free of {label}?" (Yes = absent), a
wording and meaning held out of its training, so it answers as if asked about presence. The demo

1. writes a synthetic cohort and imports it (CT-RATE importer: all six tasks' QA pairs);
2. adds the new-wording pairs and lets a simulated curator rate a balanced set of them (as many
   "Yes" as "No"), plus a replay sample of the usual pairs of every task (the curated training
   set is what passes the 3D-RAD filter);
3. runs `annotation.training_set.run_finetune` (LoRA, patient-level split, registration);
4. evaluates base and finetuned model on the held-out patients: the new wording (balanced), and
   all six original tasks (they should not get worse), and prints the table used in docs/finetune.md.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NEW_WORDING = "Is the CT scan free of {label}?"
# Findings the default model sees (held-out AUC >= 0.9 in model/default/README.md): a flipped
# wording can only be answered as well as the finding itself is seen.
DEMO_LABELS = ("Pleural effusion", "Cardiomegaly", "Medical material")
EXISTENCE_CHOICES = ("Yes", "No", "-", "-")
NEW_PREFIX = NEW_WORDING.split("{")[0]
CURATOR = "demo-curator"
PRIMARY = {"existence_detection": "accuracy", "static_temporal_diagnosis": "accuracy",
           "longitudinal_temporal_diagnosis": "accuracy", "image_observation": "rouge1",
           "anomaly_detection": "rouge1", "medical_computation": "rouge1"}


def build_store(work: Path, patients: int, seed: int, size: tuple[int, int, int]):
    """The cohort (reused when present) imported into a fresh SQLite store."""
    from annotation.importers.ctrate import import_ctrate
    from annotation.store import Store
    from annotation.synth.cohort import write_cohort

    cohort = work / "cohort"
    if not (cohort / "labels.csv").is_file():
        print(f"[demo] writing a synthetic cohort of {patients} patients", flush=True)
        write_cohort(cohort, patients, seed=seed, size=size)
    db = work / "demo.sqlite"
    db.unlink(missing_ok=True)
    store = Store.create(f"sqlite:///{db}")
    import_ctrate(store.db, cohort / "reports.csv", cohort / "labels.csv", cohort / "metadata.csv",
                  volumes=cohort / "volumes")
    return store


def add_new_wording(store) -> list[int]:
    """One inverted-wording question per scan and demo label; returns the new pair ids."""
    ids = []
    for scan in store.scans():
        labels = store.labels(scan.id)
        for k, label in enumerate(DEMO_LABELS):
            if label not in labels:
                continue
            absent = labels[label] == 0
            ids.append(store.add_qa_pair(
                scan.id, "existence_detection", NEW_WORDING.format(label=label.lower()), "Yes" if absent else "No",
                subtask=str(k + 1), choices=EXISTENCE_CHOICES, answer_choice="A" if absent else "B",
                source="generated", provenance={"by": "scripts/feedback_demo.py"}))
    return ids


def curate(store, new_ids: list[int], replay_per_task: int, seed: int) -> None:
    """The simulated curator rates every new pair 5 and a seeded sample of each task's usual pairs
    (replay, so the other tasks are not forgotten); everything else stays unrated (filtered out).
    Usual existence questions are replayed as often as new ones: the two wordings differ only in
    meaning, so the model must learn to read the wording rather than to answer "Yes" more often."""
    rng = random.Random(seed)
    chosen = balanced(store, new_ids, rng)
    replay = []
    for task in PRIMARY:
        pairs = [q.id for q in store.qa_pairs(task=task) if not q.question.startswith(NEW_PREFIX)]
        wanted = len(chosen) if task == "existence_detection" else replay_per_task
        replay += rng.sample(pairs, min(wanted, len(pairs)))
    for qa_id in chosen + replay:
        store.save_rating(CURATOR, qa_id, [5] * 5, consistent=True)


def balanced(store, qa_ids: list[int], rng: random.Random) -> list[int]:
    """As many "Yes" as "No" pairs (most findings are absent: a model answering "Yes" to every
    new question would otherwise look good)."""
    by_answer: dict[str, list[int]] = {}
    for qa_id in qa_ids:
        by_answer.setdefault(store.qa_pair(qa_id).answer, []).append(qa_id)
    n = min(len(group) for group in by_answer.values())
    return sorted(qa_id for group in by_answer.values() for qa_id in rng.sample(group, n))


def eval_samples(store, patients: set[str], new_wording: bool) -> list:
    """Held-out patients' pairs (the new wording only, or every original pair), in a seeded order."""
    from model.training.finetune.config import Sample

    frame = store.qa_frame()
    is_new = frame["question"].str.startswith(NEW_PREFIX)
    rows = frame[frame["patient"].isin(patients) & (is_new == new_wording)]
    if new_wording:
        rows = frame[frame["qa_id"].isin(balanced(store, rows["qa_id"].astype(int).tolist(), random.Random(1)))]
    samples = []
    for r in rows.itertuples(index=False):
        closed = r.question_type == "closed"
        choices = (r.choice_a, r.choice_b, r.choice_c, r.choice_d) if closed else None
        samples.append(Sample(r.path, r.question, r.answer, choices, r.answer_choice if closed else None,
                              r.task, int(r.qa_id), f"qa_pairs:{r.qa_id}"))
    random.Random(0).shuffle(samples)  # --eval-limit then takes a sample of all scans, not the first few
    return samples


def compare(base_path: str | None, model_path: str, folders: dict[str, Path], volumes: Path,
            limit: int) -> dict[str, dict[str, dict]]:
    """evaluate_vlm of both models on each evaluation folder."""
    from model.evaluation.evaluate import evaluate_vlm
    from model.inference.loading import load_vlm

    reports: dict[str, dict[str, dict]] = {}
    for key, vlm in (("base", load_vlm(base_path)), ("finetuned", load_vlm(model_path))):
        for name, qa in folders.items():
            print(f"[demo] evaluating {key} on {name}", flush=True)
            reports.setdefault(name, {})[key] = evaluate_vlm(vlm, qa, volumes, limit=limit, model_name=key)
    return reports


def table(reports: dict[str, dict[str, dict]]) -> tuple[str, dict]:
    """A markdown table of the primary metric per task, base vs finetuned, and the summary."""
    lines = ["| evaluation set | task | metric | n | base | finetuned | change |", "|---|---|---|---|---|---|---|"]
    summary = {}
    for name, pair in reports.items():
        for task, figures in pair["finetuned"]["tasks"].items():
            metric = PRIMARY[task]
            before, after = pair["base"]["tasks"][task][metric], figures[metric]
            summary[f"{name}/{task}"] = {"metric": metric, "base": before, "finetuned": after,
                                         "change": after - before, "n": figures["n"]}
            lines.append(f"| {name} | {task} | {metric} | {figures['n']} | {before:.1f} | {after:.1f} | "
                         f"{after - before:+.1f} |")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="base model folder or registered name (default: the embedded model)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-tmp" / "feedback-demo")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--size", default="64,192,192", help="cohort volume size z,y,x")
    parser.add_argument("--seed", type=int, default=7, help="cohort seed (the default model used 0: other patients)")
    parser.add_argument("--replay-per-task", type=int, default=80)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-limit", type=int, default=250, help="held-out questions per task and set (closed tasks: 100 is too few to see a 2-point change)")
    args = parser.parse_args()

    from annotation.curation import FilterRule
    from annotation.training_set import run_finetune, write_eval_folder
    from model.training.finetune.config import FinetuneConfig

    start = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    store = build_store(work, args.patients, args.seed, tuple(int(v) for v in args.size.split(",")))
    new_ids = add_new_wording(store)
    curate(store, new_ids, args.replay_per_task, args.seed)
    print(f"[demo] {len(new_ids)} new-wording pairs; {store.curation_preview(FilterRule(cap_per_question=None)).passed}"
          " pairs pass the filter", flush=True)
    train_start = time.perf_counter()
    outcome = run_finetune(
        store, work / "run", base=args.base, rule=FilterRule(cap_per_question=None), val_frac=0.25,
        split_seed=args.seed, config=FinetuneConfig(lr=args.lr, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                                                    max_steps=args.steps, batch_size=args.batch_size,
                                                    seed=args.seed),
        eval_limit=args.eval_limit, name=f"feedback-demo-{time.strftime('%H%M%S')}",
        progress=lambda p: print(f"[train] step {p.step}/{p.total_steps} loss {p.loss:.3f}", flush=True)
        if p.step % 10 == 0 or p.step == p.total_steps else None,
        log=lambda text: print(f"[demo] {text}", flush=True))
    train_minutes = (time.perf_counter() - train_start) / 60
    record = json.loads((work / "run" / "ctvqa_finetune.json").read_text())
    heldout = store.qa_frame()
    patients = set(heldout.loc[heldout["qa_id"].isin(record["training_set"]["heldout_qa_ids"]), "patient"])
    volumes = work / "eval" / "volumes"
    folders = {name: write_eval_folder(eval_samples(store, patients, name == "new wording"), work / "eval" / key,
                                       volumes)
               for name, key in (("new wording", "new"), ("original tasks", "original"))}
    reports = compare(record["base_path"], outcome.model_path, folders, volumes, args.eval_limit)
    text, summary = table(reports)
    print(text)
    result = {"base": record["base_name"], "version": outcome.version, "steps": outcome.train.step,
              "train_minutes": train_minutes, "total_minutes": (time.perf_counter() - start) / 60,
              "heldout_patients": len(patients), "new_pairs": len(new_ids), "table": summary}
    (work / "feedback_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    new = [v["change"] for k, v in summary.items() if k.startswith("new wording/")]
    other = [v["change"] for k, v in summary.items() if k.startswith("original tasks/")]
    print(f"new wording: {min(new):+.1f} points (target >= +20); worst other task: {min(other):+.1f} "
          f"(target >= -2); training {train_minutes:.1f} min, total {result['total_minutes']:.1f} min")
    store.close()


if __name__ == "__main__":
    main()
