"""Terraform backends for atmosbuild's terraform components (SPEC 9).

The backend of one (deployment, component, target): the component's
`backend:` or atmos.yaml's `terraform.backend`, interpolated with
${deployment}, ${component} and ${target}; None is the embedded default, the
local backend under STATE_DIR/tfstate/DEPLOYMENT/TYPE/NAME/ with one
Terraform workspace per target. It reaches Terraform as an override file
beside the module, and the key as an ingredient with secrets as digests.
How a `backend:` block is written is checked by config (config/backend.py).
"""

from __future__ import annotations

import os


def _interpolate(value, names: dict):
    if isinstance(value, str):
        from ..config.resolve import substitute

        return substitute(value, names.__getitem__, "${")
    if isinstance(value, dict):
        return {k: _interpolate(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, names) for v in value]
    return value


def chosen_backend(comp, settings, deployment: str, target: str) -> dict | None:
    """The backend for one component at one target, interpolated: the
    component's `backend:` wins over atmos.yaml's `terraform.backend`; None
    is the embedded default (local backend under STATE_DIR)."""
    value = comp.backend if getattr(comp, "backend", None) is not None else \
        (settings or {}).get("backend")
    if value is None:
        return None
    names = {"deployment": deployment, "component": comp.id, "target": target}
    return {"type": value["type"], "config": _interpolate(value.get("config") or {}, names)}


def _secret_setting(name: str) -> bool:
    from ..config.resolve import is_sensitive_name

    return name == "conn_str" or (name != "key" and is_sensitive_name(name))


def backend_ingredient(backend: dict | None) -> dict:
    """The backend as it enters the key: no absolute paths (the default is
    just "default"), secret settings as digests."""
    if backend is None:
        return {"type": "default"}
    if backend["type"] == "module":
        return {"type": "module"}
    from ..graph.keys import secret_digest

    return {"type": backend["type"],
            "config": {k: secret_digest(v) if _secret_setting(k) else v
                       for k, v in backend["config"].items()}}


def backend_secrets(backend: dict | None) -> list[str]:
    if not backend or backend["type"] == "module":
        return []
    return [v for k, v in backend["config"].items() if _secret_setting(k) and isinstance(v, str) and v]


def state_paths(state_dir: str, deployment: str, cid: str) -> str:
    """The default local backend's directory for one component (SPEC 9)."""
    return os.path.join(state_dir, "tfstate", *deployment.split("/"), *cid.split("/"))


def override_document(backend: dict | None, state_dir: str, deployment: str, cid: str) -> dict | None:
    if backend is None:
        base = state_paths(state_dir, deployment, cid)
        return {"terraform": {"backend": {"local": {
            "path": os.path.join(base, "default.tfstate"), "workspace_dir": base}}}}
    if backend["type"] == "module":
        return None
    return {"terraform": {"backend": {backend["type"]: backend["config"]}}}
