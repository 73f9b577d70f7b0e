"""The night's diagnosis: apply a diagnosis bundle to every ingested video (``usv-ray predict``)."""
