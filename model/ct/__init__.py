"""CT input: reading any supported file into one canonical HU volume (`io`, `volume`, `formats`,
`dicom`), display windows, and preprocessing to the model's input tensor.
"""
