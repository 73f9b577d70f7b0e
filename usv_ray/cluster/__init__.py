"""Nodule clustering: group a patient's tracklet embeddings into nodules, and score it."""
