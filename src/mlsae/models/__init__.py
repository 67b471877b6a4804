"""Language models and their residual streams: the registry and loading (``registry``), the offline zoo
(``zoo``), their evaluation (``lm_eval``), reading and splicing residual streams (``residuals``), tuned lenses
and their training (``lens``, ``lens_training``). Imports :mod:`mlsae.core` and :mod:`mlsae.data`."""
