"""Using mlsae SAEs elsewhere: the per-layer SAELens export (``saelens``), a static latent dashboard that opens in
the browser (``dashboard``) and the Neuronpedia-style export of features and activations (``neuronpedia``).
Imports core, data, models, sae and analysis; never training or studies. (The Hub's own mixin lives on the
model, :class:`mlsae.sae.model.MLSAE`.)"""
