"""Nodule detection and tracking: the detector, its training and evaluation, and the tracker
that turns per-frame detections into tracklets."""
