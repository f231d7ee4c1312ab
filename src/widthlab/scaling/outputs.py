"""compare's files: compare.json as strict JSON, and report.md / compare.json written atomically."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np


def jsonable(x):
    """Strict JSON: NaN -> null, ±inf -> "inf"/"-inf" (an infinite multiplier is a real answer)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) else ("inf" if x == math.inf else "-inf" if x == -math.inf else x)
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
