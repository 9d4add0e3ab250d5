"""`python -m model.training.finetune` (also under torchrun / accelerate launch): see command.py."""
from model.training.finetune.command import main

raise SystemExit(main())
