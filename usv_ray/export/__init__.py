"""The night's results as a PACS and an EHR read them (``usv-ray export``)."""
