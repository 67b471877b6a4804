"""Training MLSAEs: the configuration, loop, checkpoints, provenance and the train-or-load store (``train``),
data parallelism on ``torch.distributed`` (``distributed``). Imports the rooms below it (core, data, models,
sae), never :mod:`mlsae.analysis`, :mod:`mlsae.studies` or :mod:`mlsae.figures`."""
