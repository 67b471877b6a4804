"""What a reader sees: figures (``plots``), a notebook's recorded key numbers (``records``), running the
notebooks and where their figures go (``notebooks``). Takes statistics, never models: imports only
:mod:`mlsae.core` and :mod:`mlsae.analysis`."""
