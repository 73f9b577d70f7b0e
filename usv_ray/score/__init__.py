"""Scoring a run against a synthetic archive's hidden truth (``usv-ray score``)."""
