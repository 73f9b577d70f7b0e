"""Evaluation of per-video benign/malignant predictions: metrics with patient-bootstrap CIs."""
