"""What atmosbuild needs to know of a Terraform module, read from its files.

Per file, a small *summary* (plain data, JSON): the variables it declares,
the modules it calls (name, source, version, where), its `terraform` block's
provider requirements and backend, and which outputs it marks sensitive.
Summaries are a pure function of a file's bytes, so they are cached by the
file's digest (`SummaryCache`, a JSON file under the state directory): a
rollout parses only the `.tf` files that changed since the last one, and a
rollout where none changed never imports the HCL parser (python-hcl2, a
Lark grammar: ~0.1 s to import and ~7 ms per file).

`local_modules` follows `module` blocks with a local `source` (`./x`,
`../modules/label`) recursively over a directory tree, given only a way to
read summaries of a directory: the same function serves the workspace root
and, later, trees fetched from git.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from ..config.workspace import outside_root
from ..fileops import JsonCache

SUMMARY_VERSION = 2


class ModuleError(Exception):
    """A problem in a module's files: `file` is root-relative, line/col 1-based."""

    def __init__(self, file: str, line: int | None, col: int | None, message: str) -> None:
        super().__init__(message)
        self.file, self.line, self.col, self.message = file, line, col, message


def is_module_file(name: str) -> bool:
    return name.endswith(".tf") or name.endswith(".tf.json")


def is_local_source(source: str) -> bool:
    return source.startswith("./") or source.startswith("../") or source in (".", "..")


# -- one file -------------------------------------------------------------------------

def summarize(name: str, text: str) -> dict:
    """The summary of one module file (`name` decides .tf or .tf.json).
    A parse error is a summary too: {"error": [line, col, message]}."""
    try:
        if name.endswith(".tf.json"):
            data = _json_blocks(text)
        else:
            data = _hcl_blocks(text)
    except _ParseFailure as exc:
        return {"v": SUMMARY_VERSION, "error": [exc.line, exc.col, exc.message]}
    out = {"v": SUMMARY_VERSION, "variables": [], "modules": [], "providers": {},
           "backend": None, "cloud": False, "sensitive_outputs": [], "uses": []}
    # Provider local names the file uses (resource and data types' prefixes,
    # provider blocks): what init installs besides `required_providers`.
    uses = {rtype.split("_", 1)[0] for kind in ("resource", "data", "ephemeral")
            for rtype, _ in data.get(kind, [])}
    uses |= {pname for pname, _ in data.get("provider", [])}
    out["uses"] = sorted(uses)
    for vname, _ in data.get("variable", []):
        out["variables"].append(vname)
    for mname, body in data.get("module", []):
        source = body.get("source") if isinstance(body, dict) else None
        line = _module_line(text, mname, name.endswith(".tf.json"))
        out["modules"].append([mname, source if isinstance(source, str) else None,
                               body.get("version") if isinstance(body, dict) else None, line])
    for oname, body in data.get("output", []):
        if isinstance(body, dict) and body.get("sensitive") is True:
            out["sensitive_outputs"].append(oname)
    for block in data.get("terraform", []):
        if not isinstance(block, dict):
            continue
        for req in _as_list(block.get("required_providers")):
            if isinstance(req, dict):
                for pname, spec in req.items():
                    if pname != "__is_block__":
                        out["providers"][pname] = _plain(spec)
        for backend in _as_list(block.get("backend")):
            if isinstance(backend, dict):
                for btype, body in backend.items():
                    out["backend"] = [_unquote(btype), _plain(body)]
        if block.get("cloud") is not None:
            out["cloud"] = True
    return out


class _ParseFailure(Exception):
    def __init__(self, line, col, message) -> None:
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


def _hcl_blocks(text: str) -> dict:
    import hcl2  # only when a .tf file is new to the cache

    try:
        raw = hcl2.loads(text)
    except Exception as exc:  # lark's UnexpectedInput and friends carry line/column
        line, col = getattr(exc, "line", None), getattr(exc, "column", None)
        token = getattr(exc, "token", None)
        if token is not None:
            first = f"unexpected {str(token).strip()[:40]!r}" if str(token).strip() else "unexpected end of input"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = re.sub(r"\s*at line \d+,? col(umn)? \d+\.?", "", first)
        raise _ParseFailure(line if isinstance(line, int) and line > 0 else None,
                            col if isinstance(col, int) and col > 0 else None,
                            f"cannot parse Terraform file: {first}") from None
    out: dict[str, list] = {}
    for kind in ("variable", "module", "output", "resource", "data", "ephemeral", "provider"):
        for block in _as_list(raw.get(kind)):
            if isinstance(block, dict):
                for label, body in block.items():
                    if label != "__is_block__":
                        out.setdefault(kind, []).append((_unquote(label), _plain(body)))
    out["terraform"] = [_plain(b) for b in _as_list(raw.get("terraform"))]
    return out


def _json_blocks(text: str) -> dict:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
        raise _ParseFailure(line, col, f"cannot parse Terraform JSON file: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise _ParseFailure(1, 1, "a Terraform JSON file must hold an object")
    out: dict[str, list] = {}
    for kind in ("variable", "module", "output", "resource", "data", "ephemeral", "provider"):
        for block in _as_list(raw.get(kind)):
            if isinstance(block, dict):
                for label, body in block.items():
                    out.setdefault(kind, []).append((label, body))
    out["terraform"] = _as_list(raw.get("terraform"))
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _unquote(text):
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _plain(value):
    """python-hcl2's output without its markers and with strings unquoted."""
    if isinstance(value, dict):
        return {_unquote(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _unquote(value)


def _module_line(text: str, name: str, is_json: bool) -> list | None:
    """[line, col] of the `source` of module `name` (best effort)."""
    head = re.search(r'"%s"\s*:\s*\{' % re.escape(name) if is_json
                     else r'module\s+"?%s"?\s*\{' % re.escape(name), text)
    if not head:
        return None
    src = re.compile(r'"?source"?\s*[=:]').search(text, head.end())
    pos = src.start() if src else head.start()
    line = text.count("\n", 0, pos) + 1
    return [line, pos - (text.rfind("\n", 0, pos) + 1) + 1]


# -- the cache ------------------------------------------------------------------------

class SummaryCache(JsonCache):
    """Summaries by file digest, in one JSON file (data, never code)."""

    def unwrap(self, raw) -> dict:
        if isinstance(raw, dict) and raw.get("v") == SUMMARY_VERSION:
            return raw.get("files") or {}
        return {}

    def wrap(self, data: dict):
        if len(data) > 20000:  # keep it bounded: start over (it is only a cache)
            data = {}
        return {"v": SUMMARY_VERSION, "files": data}

    def get(self, digest: str, name: str, read: Callable[[], str]) -> dict:
        data = self._load()
        key = f"{digest}:{'json' if name.endswith('.tf.json') else 'hcl'}"
        hit = data.get(key)
        if hit is None:
            hit = data[key] = summarize(name, read())
            self.dirty = True
        return hit


# -- a module and the local modules it calls --------------------------------------------

@dataclass(frozen=True)
class Module:
    """One module directory: its files' summaries by file name."""

    dir: str  # root-relative
    files: Mapping[str, dict]

    def variables(self) -> set[str]:
        return {v for s in self.files.values() for v in s.get("variables", ())}

    def sensitive_outputs(self) -> set[str]:
        return {v for s in self.files.values() for v in s.get("sensitive_outputs", ())}

    def check(self) -> None:
        for name in sorted(self.files):
            err = self.files[name].get("error")
            if err:
                raise ModuleError(_join(self.dir, name), err[0], err[1], err[2])


def _join(directory: str, name: str) -> str:
    return name if directory in (".", "") else f"{directory}/{name}"


def local_modules(root_dir: str, read_module: Callable[[str], Module]) -> list[Module]:
    """The module at `root_dir` (root-relative) and every local module it
    calls, recursively, each once, root module first then by path.

    `read_module(dir)` gives a directory's summaries. A local source that
    leaves the tree (`../../..` above the root) raises ModuleError at the
    `source` line; so does a missing module directory."""
    first = read_module(root_dir)
    first.check()
    seen = {root_dir: first}
    todo = [first]
    while todo:
        mod = todo.pop()
        for name in sorted(mod.files):
            for mname, source, _, where in mod.files[name].get("modules", ()):
                if not isinstance(source, str) or not is_local_source(source):
                    continue
                target = posixpath.normpath(posixpath.join(mod.dir, source))
                line, col = where if where else (None, None)
                if outside_root(target):
                    raise ModuleError(_join(mod.dir, name), line, col,
                                      f"module \"{mname}\": local source '{source}' resolves "
                                      "outside the workspace root")
                if target in seen:
                    continue
                try:
                    child = read_module(target)
                except (FileNotFoundError, NotADirectoryError):
                    raise ModuleError(_join(mod.dir, name), line, col,
                                      f"module \"{mname}\": local source '{source}' is not a "
                                      "directory") from None
                except ModuleOutside:
                    raise ModuleError(_join(mod.dir, name), line, col,
                                      f"module \"{mname}\": local source '{source}' resolves "
                                      "outside the workspace root") from None
                child.check()
                seen[target] = child
                todo.append(child)
    return [first] + [seen[d] for d in sorted(seen) if d != root_dir]


class ModuleOutside(Exception):
    """read_module found that a directory is outside the tree once symlinks are followed."""


def provider_addresses(modules: list[Module]) -> list[str]:
    """The provider source addresses init may install for these modules
    (normalized: registry.terraform.io/hashicorp/aws), built-in `terraform`
    left out: what must not be installed into a shared cache concurrently."""
    out = set()
    for mod in modules:
        sources = {}
        for summary in mod.files.values():
            for pname, spec in summary.get("providers", {}).items():
                src = spec.get("source") if isinstance(spec, dict) else None
                sources[pname] = src if isinstance(src, str) and src else f"hashicorp/{pname}"
        names = set(sources)
        for summary in mod.files.values():
            names |= set(summary.get("uses", ()))
        for name in names:
            address = (sources.get(name) or f"hashicorp/{name}").lower()
            if address.count("/") == 1:
                address = "registry.terraform.io/" + address
            if address.endswith("terraform.io/builtin/terraform") or (name == "terraform"
                                                                       and name not in sources):
                continue  # built in: nothing to install
            out.add(address)
    return sorted(out)


def init_inputs(modules: list[Module]) -> dict:
    """What `terraform init` depends on in the modules' files: module calls
    (sources and versions, with local paths), provider requirements, backend
    and cloud blocks. File contents beyond that do not need a new init."""
    calls, providers, backends = [], {}, []
    for mod in modules:
        for name in sorted(mod.files):
            summary = mod.files[name]
            for mname, source, version, _ in summary.get("modules", ()):
                calls.append([mod.dir, mname, source, version])
            for pname, spec in sorted(summary.get("providers", {}).items()):
                providers[f"{mod.dir}:{pname}"] = spec
            if summary.get("backend") is not None or summary.get("cloud"):
                backends.append([mod.dir, summary.get("backend"), summary.get("cloud")])
    return {"modules": calls, "providers": providers, "backends": backends}
