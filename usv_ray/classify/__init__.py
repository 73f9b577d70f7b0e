"""Per-video benign/malignant diagnosis: a frame CNN, then an LSTM over its frame features."""
