"""Tilelli: small byte-level language models with routed pathways and ternary weights."""

from tilelli.errors import TilelliError
from tilelli.model.config import ModelConfig, from_name, list_configs

__all__ = ["ModelConfig", "TilelliError", "from_name", "list_configs", "load", "build_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import tilelli` stays cheap for the CLI's --help.
    if name == "load":
        from tilelli.model.checkpoint import load
        return load
    if name == "build_model":
        from tilelli.model.models import build_model
        return build_model
    raise AttributeError(name)
