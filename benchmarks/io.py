"""JSON output: non-finite floats become null (ngdref.io's cleaning); files are written atomically
with ngdref.io.write_atomic (temp + fsync + os.replace). Unknown objects are written as repr()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ngdref.io import _clean, write_atomic  # noqa: F401  (write_atomic is re-exported)


def _default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def dumps(obj) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_default))), indent=1, ensure_ascii=False) + "\n"
