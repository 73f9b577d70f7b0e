"""Nodule re-identification: which tracklets of a patient show the same nodule."""
