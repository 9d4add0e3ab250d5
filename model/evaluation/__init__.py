"""Judging a model: text metrics and `evaluate_vlm` over a QA folder.
"""
