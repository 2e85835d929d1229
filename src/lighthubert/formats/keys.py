"""Key-table helpers that every format's key map uses: a regex table lookup, and the two
weight-norm spellings (handled here and nowhere else)."""

from __future__ import annotations

import re
from typing import Optional

# The new weight-norm spelling (torch.nn.utils.parametrizations) -> the old one we keep.
WEIGHT_NORM = [
    (r"^(.*)\.parametrizations\.weight\.original0$", r"\1.weight_g"),
    (r"^(.*)\.parametrizations\.weight\.original1$", r"\1.weight_v"),
]


def map_key(key: str, table: list[tuple[str, str]]) -> Optional[str]:
    """`key` renamed by the first (pattern, replacement) of `table` that matches it; None if none does."""
    for pattern, repl in table:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None
