"""`python -m model.training.default`: train the embedded default model (see run.py)."""
from model.training.default.run import main

raise SystemExit(main())
