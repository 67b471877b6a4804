"""The multi-layer SAE: its shape and hyper-parameters (``config``), the module (``model``), its files, ours and
the released layouts (``io``), its sparse kernels (``kernels``) and the one path from residual streams to its
inputs and latents (``pipeline``). Imports :mod:`mlsae.core` and :mod:`mlsae.models` (residual streams, lenses)."""
