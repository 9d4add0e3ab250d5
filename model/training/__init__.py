"""Making models: the embedded default model's training (`default`) and LoRA finetuning (`finetune`).
"""
