"""Shell completion (SPEC 13): click's protocol as bash, zsh and fish drive
it, on real workspaces; and bash itself, sourcing the script atmosbuild
prints, completing a label whose ':' bash splits words at."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


def workspace(ws) -> None:
    ws.write("api/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}, "prod": {}},
        "components": {"command": {"ecr/api": {"run": "true"}, "deploy": {"run": "true"}},
                       "terraform": {"net/vpc": {"source": "tf"}}}}}))
    ws.write("infra/db/BUILD.atmos", 'deployment "db" {\n  target "dev" {}\n'
             '  command "migrate" {\n    run = ["true"]\n  }\n}\n')
    ws.write("tf/main.tf", "")


def complete(ws, words: str, shell: str = "bash", cword: int | None = None) -> list[str]:
    """What `atmosbuild WORDS<TAB>` offers, through click's protocol."""
    parts = words.split(" ")
    env = {"_ATMOSBUILD_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(parts) - 1 if cword is None else cword)}
    if shell == "fish":  # fish passes the line so far and the word being completed
        env["COMP_CWORD"] = parts[-1]
    proc = run_cli(cwd=ws.root, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if shell == "bash":
        return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line]
    if shell == "zsh":
        lines = proc.stdout.splitlines()
        return [lines[i + 1].replace("\\:", ":") for i in range(0, len(lines), 3)]
    return [line.split(",", 1)[1].split("\t")[0] for line in proc.stdout.splitlines() if line]


def test_labels_and_patterns_of_the_workspace_are_offered(ws):
    workspace(ws)
    offered = complete(ws, "atmosbuild rollout //")
    assert offered == ["//api:dev", "//api:prod", "//infra/db:dev", "//...:dev", "//...:prod",
                       "//infra/...:dev"]
    assert complete(ws, "atmosbuild plan //in") == ["//infra/db:dev", "//infra/...:dev"]
    assert complete(ws, "atmosbuild status //api:p") == ["//api:prod"]
    for shell in ("zsh", "fish"):
        assert complete(ws, "atmosbuild plan //api", shell=shell) == ["//api:dev", "//api:prod"]


def test_a_labels_component_ids_are_offered(ws):
    workspace(ws)
    assert complete(ws, "atmosbuild explain //api:dev ") == [
        "command/ecr/api", "command/deploy", "terraform/net/vpc"]
    assert complete(ws, "atmosbuild explain //api:dev command/") == ["command/ecr/api", "command/deploy"]
    assert complete(ws, "atmosbuild rollout //infra/db:dev --only ") == ["command/migrate"]
    assert complete(ws, "atmosbuild -C . plan //api:dev --only t") == ["terraform/net/vpc"]


def test_commands_and_flags_come_from_click(ws):
    workspace(ws)
    assert "rollout" in complete(ws, "atmosbuild ") and complete(ws, "atmosbuild ro") == ["rollout"]
    assert {"--profile", "--report"} <= set(complete(ws, "atmosbuild rollout //api:dev --"))
    assert complete(ws, "atmosbuild plan //api:dev --format ") == ["text", "json"]


def test_bash_word_splitting_at_colons_is_undone(ws):
    """Bash hands `//api:p` over as `//api`, `:`, `p`; it puts what we
    answer in place of the part after the colon."""
    workspace(ws)
    assert complete(ws, "atmosbuild rollout //api : p") == ["prod"]
    assert complete(ws, "atmosbuild rollout //api :") == ["dev", "prod"]
    assert complete(ws, "atmosbuild explain //api : dev comm") == ["command/ecr/api", "command/deploy"]


def test_a_broken_workspace_offers_nothing_and_never_a_traceback(ws):
    workspace(ws)
    ws.write("api/deployment.yaml", "deployment: [unclosed\n")
    assert complete(ws, "atmosbuild rollout //") == ["//infra/db:dev", "//...:dev", "//infra/...:dev"]
    assert complete(ws, "atmosbuild explain //api:dev ") == []
    assert complete(ws, "atmosbuild explain //nope:dev ") == []
    assert complete(ws, "atmosbuild -C /does/not/exist rollout //") == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_real_bash_completes_a_label_through_the_sourced_script(ws, tmp_path):
    workspace(ws)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "atmosbuild"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m atmosbuild \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    script = (
        'eval "$(_ATMOSBUILD_COMPLETE=bash_source atmosbuild)"\n'
        'COMP_LINE="atmosbuild plan //api:p"; COMP_WORDS=(atmosbuild plan //api : p); COMP_CWORD=4\n'
        '_atmosbuild_completion atmosbuild; printf "%s\\n" "${COMPREPLY[@]}"\n'
        'COMPREPLY=(); COMP_WORDS=(atmosbuild explain //api:dev command/d); COMP_CWORD=3\n'
        '_atmosbuild_completion atmosbuild; printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "-c", script], cwd=ws.root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["prod", "command/deploy"]
