"""Judging a model: `evaluate_vlm` over a QA folder (evaluate.py) at benchmark scale (runner,
answers, sharding), the figures it reports (report.py) with the measures answer priors cannot
pass (measures.py, findings.py), and the text metrics (metrics.py).
"""
