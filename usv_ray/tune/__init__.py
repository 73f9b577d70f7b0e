"""Ray Tune sweeps over the stages' hyperparameters (``usv-ray tune``).

Targets (``--target``):

* ``cnn``: learning rate and batch size of the frame CNN (``classify.cnn_lr``,
  ``classify.cnn_batch_size``), on one fold's training patients, validated on the share of
  them that validates that fold's CNN in ``usv-ray classify``;
* ``lstm``: learning rate and batch size of the variable-frame LSTM, on a classify
  folder's cached features (the same fold and validation videos);
* ``equal_frames``: N of the equal-frame CNN-LSTM (the paper's 10..20 experiment);
* ``variable_max``: the most frames a video keeps in the variable-frame set
  (``ingest.n_frames``), by capping the cached features;
* ``reid``: learning rate and P (nodules per P x K batch) of the re-ID model;
* ``tau``: the clustering threshold of the nodule index (``index.tau``), on the cached
  validation embeddings of a re-ID folder (no training).

Each training trial is a Ray Tune function that launches the stage's own Ray Train run
(Train V2: the run reports to Tune through ``TuneReportCallback``); ASHA stops poor
trials early where the stage reports every epoch. A sweep resumes on the same ``--out``.
It writes ``results.{csv,md}`` (one row per trial) and ``best.yaml``, a full config with
the best values that every command accepts as ``--config``.
"""

from usv_ray.tune.sweep import TuneError, TuneSummary, run_tune
from usv_ray.tune.tau import run_tau_sweep

__all__ = ["TuneError", "TuneSummary", "run_tau_sweep", "run_tune"]
