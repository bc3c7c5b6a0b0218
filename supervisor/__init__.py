"""llm-supervisor: keeps vLLM inference servers alive. The version lives in pyproject.toml alone."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-supervisor")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
