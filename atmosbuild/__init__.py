"""atmosbuild: a declarative, incremental, parallel deployment orchestrator."""

__version__ = "0.1.0"
