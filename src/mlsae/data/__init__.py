"""Text in, tokens out: the generated offline corpus (``corpus``), every text source read through ``datasets``
and its identity (``sources``), documents cut into token blocks (``tokens``). Imports only :mod:`mlsae.core`."""
