"""Text in, tokens out: the generated offline corpus (``corpus``) and every text source read through
``datasets``, with its token stream (``sources``). Imports only :mod:`mlsae.core`."""
