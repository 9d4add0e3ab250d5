"""The networks: vision encoders, the LaMed wrapper around a causal LM, conversion of published
M3D checkpoints, and the project's tokenizer builder.
"""
