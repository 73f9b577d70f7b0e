"""Self-supervised pretraining of the 2D trunk (``usv-ray pretrain``): every stored frame of
every ingested video teaches it, no label and no box read."""
