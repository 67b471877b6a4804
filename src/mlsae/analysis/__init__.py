"""Statistics of a trained SAE on held-out text: reconstruction and downstream metrics (``metrics``), the
distributions over layers and their estimators, residual geometry (``distributions``), decoder geometry
(``decoder``), maximally activating examples (``examples``). Imports core, data, models and sae; never
training."""
