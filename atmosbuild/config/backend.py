"""The syntax of a `backend:` block (SPEC 9), in atmos.yaml's
`terraform.backend` or on a terraform component.

Config checks how the block is written, as it checks every other key; what
the terraform type does with it (which one wins, the override file, the key
ingredient, its secrets) is components/tfbackend.py. Which types accept a
`backend:` at all is their own declaration (`ComponentType.forbidden`).
"""

from __future__ import annotations

from ..errors import did_you_mean

# Terraform's own backends (1.x). `module` keeps the module's own backend block.
BACKENDS = ("local", "remote", "azurerm", "consul", "cos", "gcs", "http", "kubernetes", "oss",
            "pg", "s3", "module")
NAMES = ("deployment", "component", "target")  # what a backend config may interpolate


def backend_problem(value) -> tuple[tuple, str] | None:
    """What is wrong with a `backend:` value: (path below it, message), or None."""
    if not isinstance(value, dict):
        return (), "backend must be a map: {type: pg, config: {...}} (or {type: module})"
    for key in value:
        if key not in ("type", "config"):
            return (key,), f"unknown key '{key}' in backend" + did_you_mean(str(key), ("type", "config")) \
                + "; allowed: type, config"
    btype = value.get("type")
    if not isinstance(btype, str):
        return ("type",) if "type" in value else (), "backend needs a `type` (a Terraform backend name)"
    if btype not in BACKENDS:
        return ("type",), f"unknown backend type '{btype}'" + did_you_mean(btype, BACKENDS) \
            + f"; known: {', '.join(BACKENDS)}"
    config = value.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        return ("config",), "backend config must be a map of settings"
    if btype == "module" and config:
        return ("config",), "backend {type: module} takes no config: the module's own backend block is used"
    for key, item in config.items():
        bad = _bad_value(item)
        if bad:
            return ("config", key), f"backend config '{key}': {bad}"
    return None


def _bad_value(value) -> str:
    if value is None:
        return "null is not a setting (leave it out)"
    if isinstance(value, dict):
        return next((b for b in map(_bad_value, value.values()) if b), "")
    if isinstance(value, list):
        return next((b for b in map(_bad_value, value) if b), "")
    if isinstance(value, str) and "${" in value:
        from .resolve import references  # (only for a value that has one)

        for expr in references(value):
            if expr not in NAMES:
                return (f"unknown reference '${{{expr}}}'; a backend config may use "
                        "${deployment}, ${component} and ${target} ($${ for a literal ${)")
    return ""
