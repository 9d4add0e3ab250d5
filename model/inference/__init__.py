"""Asking a model: `VLM` (answers, streaming, choice scores, boxes), `load_vlm`, prompts, boxes.
"""
