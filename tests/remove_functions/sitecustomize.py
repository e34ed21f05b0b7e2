"""Put this directory first on PYTHONPATH to run Python without some
functions, as on another platform: ATMOS_TEST_REMOVE="os.waitid os.pidfd_open"
deletes them at interpreter start, before anything imports atmosbuild (used by
tests/test_portable.py: os.waitid is missing on macOS before Python 3.13,
os.pidfd_open everywhere but Linux)."""

import importlib
import os

for _name in os.environ.get("ATMOS_TEST_REMOVE", "").split():
    _module, _, _attr = _name.rpartition(".")
    _mod = importlib.import_module(_module)
    if hasattr(_mod, _attr):
        delattr(_mod, _attr)
