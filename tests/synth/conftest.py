"""Fixtures shared by the synthetic-generator tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def check_seeded_tree(tmp_path: Path) -> Callable[..., None]:
    """``check(generate, **kwargs)``: the generator's promise about seeds, on its tree.

    Seed 3 written twice gives the same bytes, also when rewritten over its own tree
    (idempotent); seed 4 gives the same file names with other bytes in every file.
    ``generate(out, seed=..., **kwargs)`` must return a summary with the tree's ``root``.
    """

    def tree(generate: Callable[..., dict], name: str, seed: int, kwargs: dict) -> dict:
        root = Path(generate(tmp_path / name, seed=seed, **kwargs)["root"])
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): p.read_bytes() for p in files}

    def check(generate: Callable[..., dict], **kwargs) -> None:
        a = tree(generate, "a", 3, kwargs)
        assert tree(generate, "b", 3, kwargs) == a
        c = tree(generate, "c", 4, kwargs)
        assert a.keys() == c.keys()
        assert all(a[k] != c[k] for k in a)
        assert tree(generate, "a", 3, kwargs) == a

    return check
