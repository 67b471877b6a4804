"""A notebook's key numbers, recorded by name as structured values in the executed notebook.

``record("honest_ratio", {"zoo-s": 1.27, ...})`` displays the value as an output of MIME type
:data:`MIME` (a JSON document), the way scrapbook's ``glue`` stores its scraps. JupyterLab has no
renderer for that type and shows nothing, so a reader sees each number once, in the notebook's own
sentence, at the precision a reader wants; the test suite reads the values back at full precision
(:func:`read_records`) and compares them with ``tests/references/`` within a tolerance per quantity.

Why not scrapbook itself: its last release (0.5.0) is from 2020 and it pulls in a schema and a storage
layer this needs none of; the format is one MIME type and a dict, written and read in this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

MIME = "application/vnd.mlsae.record+json"

JSONValue = Any  # None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]


def to_json_value(value: Any, name: str = "value") -> JSONValue:
    """``value`` as plain JSON: numpy and torch scalars and arrays become numbers and (nested) lists, a
    mapping a dict with string keys. JSON has no NaN: a number that is not finite (the paper's estimator
    with fewer tokens than one window) is recorded as the string ``"nan"``, ``"inf"`` or ``"-inf"``, so a
    check compares it exactly and never mistakes it for a number."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / torch, scalar or array
        value = value.tolist()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v, f"{name}[{k}]") for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return [to_json_value(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"record {name!r}: cannot record a {type(value).__name__}; give a number, a string, "
                    "or a list or dict of them")


def record(name: str, value: Any) -> None:
    """Record ``value`` as the key number ``name`` of this notebook run (shown to nobody, read by tests)."""
    from IPython.display import display  # heavy: loaded where used

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"record name {name!r}: use a Python identifier such as 'honest_ratio'")
    display({MIME: {"name": name, "value": to_json_value(value, name)}}, raw=True)


def records_in_outputs(outputs: Iterable[Mapping]) -> list[tuple[str, JSONValue]]:
    """The ``(name, value)`` records among one cell's outputs (nbformat dicts), in order."""
    found = []
    for out in outputs:
        data = out.get("data") or {}
        if out.get("output_type") in ("display_data", "execute_result") and MIME in data:
            found.append((data[MIME]["name"], data[MIME]["value"]))
    return found


def read_records(cells_outputs: Iterable[Iterable[Mapping]]) -> dict[str, JSONValue]:
    """Every record of an executed notebook, from its cells' output lists; a name recorded twice is an
    error (one name, one quantity)."""
    records: dict[str, JSONValue] = {}
    for outputs in cells_outputs:
        for name, value in records_in_outputs(outputs):
            if name in records:
                raise ValueError(f"record {name!r} is recorded twice in one notebook run; give each quantity "
                                 "one name")
            records[name] = value
    return records
