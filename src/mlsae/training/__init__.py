"""Training MLSAEs: what a run is (``config``), the loop over one model pass for one or several SAEs
(``train``), checkpoints (``checkpoint``), what a trained SAE says it was trained on (``provenance``), the
shared store of trained SAEs (``store``) and data parallelism on ``torch.distributed`` (``distributed``).
Imports the rooms below it (core, data, models, sae), never :mod:`mlsae.analysis`, :mod:`mlsae.studies` or
:mod:`mlsae.figures`."""
