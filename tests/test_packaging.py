"""What `pip install .` ships: every subpackage of atmosbuild. The tests run
from the checkout (PYTHONPATH), so a subpackage missing from pyproject.toml
would pass them all and break every installed atmosbuild."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_subpackage_is_in_the_distribution():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "atmosbuild").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
