"""Rater agreement: between raters (pairwise, as 3D-RAD measured its LLM scorers; reliability
across all raters per dimension), within a rater (repeats), the most-disagreed pairs, and the
heatmaps. pandas, scipy, sklearn, `krippendorff` and pingouin are what compute the figures."""
from annotation.agreement.disagreements import DISAGREEMENT_COLUMNS, most_disagreed
from annotation.agreement.intra import INTRA_COLUMNS, intra_rater
from annotation.agreement.pairwise import (
    METRIC_COLUMNS,
    MIN_COMMON,
    PAIRWISE_COLUMNS,
    common_warning,
    pairwise_agreement,
    per_rater_agreement,
)
from annotation.agreement.reliability import RELIABILITY_COLUMNS, reliability
from annotation.agreement.report import AgreementReport, agreement_report
from annotation.agreement.stats import mean_scores

__all__ = [
    "DISAGREEMENT_COLUMNS", "INTRA_COLUMNS", "METRIC_COLUMNS", "MIN_COMMON", "PAIRWISE_COLUMNS",
    "RELIABILITY_COLUMNS", "AgreementReport", "agreement_report", "common_warning", "intra_rater",
    "mean_scores", "most_disagreed", "pairwise_agreement", "per_rater_agreement", "reliability",
]
