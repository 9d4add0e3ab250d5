"""`python -m napari_ctvqa.cli`: the `ctvqa` command (the finetune panel runs it this way)."""
from napari_ctvqa.cli import main

main()
