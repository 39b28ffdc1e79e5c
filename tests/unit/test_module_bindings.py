"""No module of the package binds a module-level name twice by assignment: the second silently
replaces the first, so a reader who finds one does not know which is in force (merges review
finding 7: adapter/store/schema.py defined ``_log`` twice)."""

from __future__ import annotations

import ast
from collections import Counter

from tests.conftest import ROOT


def _bound_twice(source: str) -> list[str]:
    names: Counter[str] = Counter()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return sorted(name for name, count in names.items() if count > 1)


def test_the_check_finds_a_name_bound_twice() -> None:
    assert _bound_twice("import logging\n_log = logging.getLogger(__name__)\nX = 1\n_log = 2\n") == ["_log"]
    assert _bound_twice("x: int = 1\ny = 2\n") == []


def test_no_module_binds_a_module_level_name_twice() -> None:
    found = {str(path.relative_to(ROOT)): twice for path in sorted((ROOT / "adapter").rglob("*.py"))
             if (twice := _bound_twice(path.read_text(encoding="utf-8")))}
    assert found == {}
