"""The layers point one way (docs/ARCHITECTURE.md): config imports only
config/, errors and fileops; graph/ imports neither state/ nor run/. Checked
on every import statement, at the top of a module or inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atmosbuild.config.model import compile_document
from atmosbuild.config.resolve import resolve_target
from atmosbuild.config.yaml import parse_yaml
from atmosbuild.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent.parent / "atmosbuild"


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file."""
    out = []
    package = "atmosbuild." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rstrip(".").split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{alias.name}" for alias in node.names] if not node.module else [module]
                out += [(node.lineno, name) for name in names]
            else:
                out.append((node.lineno, node.module))
    return out


def _ours(module: str) -> bool:
    return module == "atmosbuild" or module.startswith("atmosbuild.")


@pytest.mark.parametrize("path", sorted((PACKAGE / "config").glob("*.py")), ids=lambda p: p.name)
def test_config_imports_only_config_errors_and_fileops(path):
    allowed = ("atmosbuild.config", "atmosbuild.errors", "atmosbuild.fileops")
    bad = [(line, m) for line, m in _imported(path)
           if _ours(m) and not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert bad == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "graph").glob("*.py")), ids=lambda p: p.name)
def test_graph_imports_neither_state_nor_run(path):
    bad = [(line, m) for line, m in _imported(path)
           if m.startswith(("atmosbuild.state", "atmosbuild.run"))]
    assert bad == []


def test_the_modes_are_the_component_types_and_reading_them_loads_no_type():
    code = ("import sys; from atmosbuild.components.base import APPLY, BUILD; "
            "from atmosbuild.components import TYPES; import atmosbuild.state.store as store; "
            "assert not hasattr(store, 'APPLY'); "
            "print(sorted(m for m in sys.modules if m.startswith('atmosbuild.components.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "['atmosbuild.components.base']"


class _Keys:
    def __init__(self, required=(), forbidden=()):
        self.required, self.forbidden = required, forbidden


def _spec(text: str, types):
    return compile_document(parse_yaml(textwrap.dedent(text), "deployment.yaml"), "p", "p", types)


DEPLOYMENT = """\
deployment:
  targets:
    dev: {}
    prod:
      components:
        helm:
          web: {source: charts/web}
  components:
    helm:
      web:
        vars: {replicas: 2}
"""


def test_a_types_required_keys_are_its_own_declaration_checked_per_target():
    spec = _spec(DEPLOYMENT, {"helm": _Keys(required=("source",))})
    assert resolve_target(spec, "prod")["helm/web"].source == "charts/web"  # the override gives it
    with pytest.raises(ConfigError) as err:
        resolve_target(spec, "dev")
    assert err.value.message == "component helm/web has no `source`: helm components need one"
    assert (err.value.line, err.value.col) == (10, 7)  # at the component


def test_a_types_forbidden_keys_and_the_known_types_are_the_registrys():
    with pytest.raises(ConfigError) as err:
        _spec(DEPLOYMENT, {"helm": _Keys(forbidden=("vars",))})
    assert err.value.message == "'vars' is not allowed in helm components"
    with pytest.raises(ConfigError) as err:
        _spec(DEPLOYMENT, {"helmfile": _Keys()})
    assert err.value.message.startswith("unknown component type 'helm' (did you mean 'helmfile'?)")
