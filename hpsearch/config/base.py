"""What every section of the schema shares: the strict base model, value types and the file's limits and variables."""

from __future__ import annotations

import re
from typing import Union

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every section: unknown keys, NaN and infinities are errors, defaults are validated too.

    Strict types: true is not the number 1, 2.0 is not an integer and "64" is not a number.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False, strict=True)


Scalar = Union[bool, int, float, str]

CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

MAX_STUDY_BYTES = 2 * 1024 * 1024  # parsing is the cost: PyYAML builds a Python object per value

MAX_ENQUEUE = 10_000

MAX_ALIAS_VALUES = 100_000  # values that aliases may add: far above sharing a list, far below a YAML bomb

STORAGE_ENV = "HPSEARCH_STORAGE"  # overrides storage: like --storage, without showing a password in `ps`

RUN_ENV = "HPSEARCH_RUN"  # the id of the `hpsearch run` a worker belongs to (set by run for its workers)
