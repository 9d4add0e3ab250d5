"""The synthetic chest CT cohort: procedural phantoms in HU with lesions standing for CT-RATE
labels, their timelines, reports and QA pairs, written in CT-RATE and 3D-RAD formats.

Modules: `geometry` (mm grid, soft shapes), `anatomy` (the base phantom), `lesions` (painting and
measuring findings), `timeline` (which findings when), `patient` (one patient's scans),
`reports`, `open_qa` (tasks 1-3), `cohort` (writes everything; `ctvqa synth`).
"""
from annotation.synth.cohort import CohortSummary, default_spacing, write_cohort
from annotation.synth.geometry import Grid
from annotation.synth.patient import Patient, Scan, synthesize_patient

__all__ = ["CohortSummary", "Grid", "Patient", "Scan", "default_spacing", "synthesize_patient", "write_cohort"]
