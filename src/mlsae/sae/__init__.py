"""The multi-layer SAE: the model and its files (``model``), its sparse kernels (``kernels``) and the one
path from residual streams to its inputs and latents (``pipeline``). Imports :mod:`mlsae.core` and
:mod:`mlsae.models` (residual streams, lenses)."""
