"""`python -m napari_ctvqa.cli`: the `ctvqa` command, for launchers that run a module (torchrun) and
for the finetune panel."""
from napari_ctvqa.cli import main

main()
