"""OmniCT's slice-volume encoder family (OmniCT paper, section 2 and appendix E), built from the
config like the M3D ViT beside it (`model.nets.vision`):

- `composition`: volumetric slice composition (three adjacent slices = one 3-channel unit; a lone
  slice copied into three channels);
- `positions`: tri-axial sinusoidal encodings over units, rows and columns, concatenated to the
  token features;
- `projection`: the token unshuffle (m x m neighbours into one token) and the MoE hybrid projection
  `W_share GELU(W_s z 1_slice + W_v z 1_volume)`;
- `organs`: organ-level tokens, a fixed number per organ aggregated from the tokens its mask covers;
- `encoder`: the shared 2D patch encoder and the whole family (`OmniCTEncoder`).
"""
