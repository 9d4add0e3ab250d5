"""Training the embedded default model: recipe, data, stage 1 (alignment), stage 2 (instruction),
evaluation and card; `python -m model.training.default` runs it (run.py).
"""
