"""A notebook's parameters as papermill hands them over: checked for type (:func:`typed_parameter`), lists
given as JSON text or YAML (:func:`list_parameter`), and the notebook presets with what they take from the
train presets (:func:`preset_settings`). Everything fails in the first cell, naming the parameter."""

from __future__ import annotations

import json

from mlsae.core.presets import NOTEBOOK_PRESETS, TRAIN_PRESETS
from mlsae.training.config import TrainConfig


def preset_settings(preset: str) -> dict:
    """A notebook preset with R and the sequence length of the train preset it names (defined there, once)."""
    if preset not in NOTEBOOK_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(NOTEBOOK_PRESETS)}")
    settings = NOTEBOOK_PRESETS[preset]
    train = TrainConfig.from_dict(TRAIN_PRESETS[settings["train"]])
    return {**settings, "expansion_factor": train.sae.expansion_factor, "seq_len": train.seq_len}


def typed_parameter(name: str, value, kind: type):
    """``value`` as a ``kind``, or a clear error naming the notebook parameter and the value papermill gave."""
    # papermill passes what the user typed; bool is an int subclass, so check it first
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"parameter {name}={value!r} should be of type {kind.__name__}, got {type(value).__name__}")
    return value


def list_parameter(name: str, value, kind: type = str, *, positive: bool = False,
                   allow_empty: bool = False) -> list | None:
    """A notebook's list parameter as papermill hands it over: a list (``-y 'ks: [16, 32]'``, or Python),
    or its JSON text (``-p ks '[16, 32]'``); every element checked, so a bad one fails in the first cell.
    An empty list is refused (for most lists a slip) unless ``allow_empty`` (where it means "none")."""
    if value is None:
        return None
    value = from_json_text(name, value, "a list", f"-p {name} '[16, 32]', or YAML, -y '{name}: [16, 32]'")
    if not isinstance(value, (list, tuple)) or not (value or allow_empty):
        raise ValueError(f"parameter {name}={value!r} should be a non-empty list, e.g. -p {name} '[16, 32]'")
    for v in value:
        typed_parameter(f"{name} element", v, kind)
        if positive and v <= 0:
            raise ValueError(f"parameter {name}={list(value)} holds {v}; every element must be positive")
    return list(value)


def from_json_text(name: str, value, what: str, example: str):
    """``value`` itself, or parsed when papermill's ``-p`` handed over its JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"parameter {name}={value!r} is not {what}; pass JSON text, {example}") from None
