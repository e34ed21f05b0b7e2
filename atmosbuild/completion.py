"""Shell completion (bash, zsh, fish) through click's mechanism (SPEC 13).

Click completes commands and flags by itself; the callbacks here add labels
(`//api:dev`, and the patterns `//...:dev`, `//infra/...:dev`) and component
ids after a label (explain's TYPE/NAME, `--only`). They read only what a
completion can afford: the package listing and each deployment file's
parsed data through the parse cache (config/doccache.py: one read, one
hash, one marshal load per file) — no validation, no resolving, no state.
A workspace with errors offers nothing rather than failing: completion
never prints a traceback into a shell.

Bash splits words at ':' (it is in COMP_WORDBREAKS), so `//api:d` reaches
us as `//api`, `:`, `d`; the bash class below glues them back and answers
with the part after the last colon, which is what bash puts in place.
"""

from __future__ import annotations

import os

from click.shell_completion import BashComplete, CompletionItem, add_completion_class, split_arg_string


def _root(ctx) -> str:
    from .config.workspace import find_root

    top = ctx.find_root()
    return find_root(top.params.get("root"))


def _documents(root: str, packages):
    """(package, deployment data) for each package that parses."""
    from .config.workspace import load_document

    for pkg in packages:
        try:
            data = load_document(root, pkg).data
        except Exception:  # a broken package offers nothing; the others still do
            continue
        if isinstance(data, dict) and isinstance(data.get("deployment"), dict):
            yield pkg, data["deployment"]


def _targets(deployment: dict) -> list[str]:
    targets = deployment.get("targets") or {}
    return [str(t) for t in targets] if isinstance(targets, dict) else []


def label_candidates(root: str, incomplete: str) -> list[str]:
    """Labels and patterns of the workspace that start with `incomplete`."""
    from .config.workspace import discover_packages

    out: list[str] = []
    packages = discover_packages(root)
    everywhere: set[str] = set()
    prefixes: dict[str, set[str]] = {}
    for pkg, deployment in _documents(root, packages):
        targets = _targets(deployment)
        everywhere.update(targets)
        out.extend(f"//{pkg}:{t}" for t in targets)
        parts = pkg.split("/") if pkg else []
        for i in range(1, len(parts)):  # //infra/...:dev for each enclosing directory
            prefixes.setdefault("/".join(parts[:i]), set()).update(targets)
    out.extend(f"//...:{t}" for t in sorted(everywhere))
    for prefix in sorted(prefixes):
        out.extend(f"//{prefix}/...:{t}" for t in sorted(prefixes[prefix]))
    return [c for c in out if c.startswith(incomplete)]


def component_candidates(root: str, labels, incomplete: str) -> list[str]:
    """The component ids (TYPE/NAME) of the packages `labels` name."""
    from .config.labels import Label, parse_label
    from .config.workspace import discover_packages

    packages: list[str] = []
    for text in labels:
        try:
            parsed = parse_label(text, allow_pattern=True)
        except Exception:
            continue
        if isinstance(parsed, Label):
            packages.append(parsed.package)
        else:
            packages.extend(discover_packages(root, parsed.prefix))
    seen: set[str] = set()
    out: list[str] = []
    for _, deployment in _documents(root, dict.fromkeys(packages)):
        components = deployment.get("components") or {}
        if not isinstance(components, dict):
            continue
        for type_, named in components.items():
            if not isinstance(named, dict):
                continue
            for name in named:
                cid = f"{type_}/{name}"
                if cid not in seen and cid.startswith(incomplete):
                    seen.add(cid)
                    out.append(cid)
    return out


def complete_labels(ctx, param, incomplete: str) -> list[CompletionItem]:
    try:
        return [CompletionItem(c) for c in label_candidates(_root(ctx), incomplete)]
    except Exception:
        return []


def complete_components(ctx, param, incomplete: str) -> list[CompletionItem]:
    try:
        given = ctx.params.get("labels") or ()
        label = ctx.params.get("label")
        labels = ([label] if label else []) + list(given)
        if not labels:
            # Click stops parsing at an option still waiting for its value
            # (`rollout //api:dev --only <TAB>`): read the labels off the line.
            labels = [w for w in _glued(split_arg_string(os.environ.get("COMP_WORDS", "")))[0]
                      if w.startswith("//")]
        if not labels:
            return []
        return [CompletionItem(c) for c in component_candidates(_root(ctx), labels, incomplete)]
    except Exception:
        return []


def _glued(words: list[str], cword: int = -1) -> tuple[list[str], int | None]:
    """`words` with bash's ':' splits glued back, and where word `cword` went."""
    glued: list[str] = []
    current = None
    join_next = False
    for i, word in enumerate(words):
        if glued and (word == ":" or join_next):
            glued[-1] += word
            join_next = word == ":"
        else:
            glued.append(word)
            join_next = False
        if i == cword:
            current = len(glued) - 1
    return glued, current


class ColonBashComplete(BashComplete):
    """Bash, with words split at ':' glued back (see the module docstring)."""

    def get_completion_args(self) -> tuple[list[str], str]:
        words = split_arg_string(os.environ.get("COMP_WORDS", ""))
        cword = int(os.environ.get("COMP_CWORD", "0") or 0)
        glued, current = _glued(words, cword)
        if current is None:  # completing a new, empty word
            self._cut = 0
            return glued[1:], ""
        incomplete = glued[current]
        split = incomplete != words[cword] if cword < len(words) else False
        self._cut = incomplete.rfind(":") + 1 if split else 0
        return glued[1:current], incomplete

    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        cut = self._cut
        items = self.get_completions(args, incomplete)
        return "\n".join(self.format_completion(
            CompletionItem(item.value[cut:] if isinstance(item.value, str) else item.value,
                           type=item.type, help=item.help)) for item in items)


def install() -> None:
    add_completion_class(ColonBashComplete, "bash")
