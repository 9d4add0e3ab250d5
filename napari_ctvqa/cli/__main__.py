"""`python -m napari_ctvqa.cli`: the `ctvqa` command, for launchers that run a module (torchrun)."""
from napari_ctvqa.cli import main

main()
