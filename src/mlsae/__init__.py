"""mlsae: multi-layer sparse autoencoders over the residual stream.

Data flows one way through the modules:
text -> data (tokens) -> models / activations (residual streams) -> lens -> sae -> train / metrics
-> analysis (statistics) -> plots (figures).
"""

__version__ = "0.1.0"
