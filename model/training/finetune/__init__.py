"""LoRA finetuning of a LaMed VLM on curated QA pairs: the training core behind `ctvqa finetune`.

One script for one process or many: `python -m model.training.finetune ...` trains in this process, and
the same command under `torchrun --nproc_per_node N -m model.training.finetune ...` or
`accelerate launch --num_processes N -m model.training.finetune ...` trains data-parallel (gloo on CPU,
NCCL on GPUs); `accelerate` sets up the process group and wraps the model in DDP.

Why it looks the way it does:
- Only the language model gets LoRA adapters (M3D: r=16, alpha=32, dropout 0.05; lr 5e-5 with
  3% warm-up and cosine decay). The vision tower and projector stay frozen, so each volume's image
  features are computed once and reused every epoch; a step then costs only the language model.
- The data order is a pure function of (seed, epoch, step): step k of any run, interrupted or not,
  sees the same examples. A checkpoint therefore needs only the trainable weights, the optimizer,
  the scheduler, the RNG states and the step; `resume=True` continues to the same final step count.
- Prompts and targets are built by the loaded model's own `VLM.build_prompt` / `VLM.prompt_ids`
  and `prompts.format_target`, so training text is exactly what the model sees when answering.
- The result is a peft adapter folder (plus tokenizer and `ctvqa.json`) that `load_finetuned`
  turns back into a plain VLM; `merge_adapter` writes a standalone `save_pretrained` folder.
"""
