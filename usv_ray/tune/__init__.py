"""Ray Tune sweeps over the stages' hyperparameters (``usv-ray tune``).

Targets (``--target``, :data:`usv_ray.tune.targets.TARGETS`):

* ``cnn``: learning rate and batch size of the frame CNN (``classify.cnn.lr``,
  ``classify.cnn.batch_size``), on one fold's training videos, validated on the share of
  them that validates that fold's CNN in ``usv-ray classify``;
* ``lstm``: learning rate and batch size of the variable-frame LSTM, on a classify
  folder's cached features (the same fold and validation videos);
* ``equal_frames``: N of the equal-frame CNN-LSTM (the paper's 10..20 experiment);
* ``variable_max``: the most frames a video keeps in the variable-frame set
  (``ingest.n_frames``), by capping the cached features;
* ``reid``: learning rate and P (nodules per P x K batch) of the re-ID model;
* ``tau``: the clustering threshold of the nodule index (``index.tau``), on the cached
  validation embeddings of a re-ID folder (no training: a plain loop, no Tune trials).

Modules: :mod:`~usv_ray.tune.sweep` is the engine (it runs a
:class:`~usv_ray.tune.sweep.Target` and knows none), :mod:`~usv_ray.tune.targets` the
training targets, the registry and :func:`run_tune`, :mod:`~usv_ray.tune.tau` the tau
target. Every split a target trains or validates on comes from the stage's own function
(:func:`usv_ray.classify.folds.fold_split`, :func:`usv_ray.reid.pairs.split_tracklets`).

Each training trial is a Ray Tune function that launches the stage's own Ray Train run
(Train V2: the run reports to Tune through ``TuneReportCallback``); ASHA stops poor
trials early where the stage reports every epoch. A sweep resumes on the same ``--out``.
It writes ``results.{csv,md}`` (one row per trial) and ``best.yaml``: the full config the
sweep ran with, the best values applied, which every command accepts as ``--config``
(``usv-ray index --config <out>/best.yaml`` indexes with the tuned ``index.tau``).
"""

from usv_ray.tune.sweep import TuneError, TuneSummary
from usv_ray.tune.targets import run_tune

__all__ = ["TuneError", "TuneSummary", "run_tune"]
