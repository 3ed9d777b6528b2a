"""Locks the public surface and keeps the import layering honest."""

import ast
from pathlib import Path

import ratelane

PACKAGE = Path(ratelane.__file__).parent

PUBLIC = [
    "PROFILES",
    "APIError",
    "Client",
    "ConfigurationError",
    "ErrorInfo",
    "FatalError",
    "InputError",
    "OutputLockedError",
    "Price",
    "Profile",
    "RatelaneError",
    "Request",
    "RequestTimeout",
    "Result",
    "Results",
    "RetryPolicy",
    "RunStats",
    "TransportError",
    "Usage",
    "__version__",
    "arun_many",
    "backoff_wait",
    "format_duration",
    "iter_results",
    "parse_duration",
    "run_many",
]


def test_public_api_is_exactly_this() -> None:
    assert ratelane.__all__ == PUBLIC
    for name in PUBLIC:
        assert hasattr(ratelane, name), name


def test_every_module_is_private_and_typed() -> None:
    assert (PACKAGE / "py.typed").exists()
    for path in PACKAGE.glob("*.py"):
        assert path.name.startswith("_"), f"{path.name} should be private (prefix _)"


# Lower layers may not import higher ones.
LAYERS = [
    {"_errors", "_durations", "_tokens", "_argtypes"},
    {"_models", "_config", "_wire"},
    {"_retry", "_limiter", "_transport", "_items", "_batch_input", "_checkpoint"},
    {"_engine"},
    {"_api"},
    {"_summary"},
    {"_cli", "_run_command", "_demo", "__init__", "__main__"},
]


def _layer_of(module: str) -> int | None:
    for depth, names in enumerate(LAYERS):
        if module in names:
            return depth
    return None


def test_imports_only_point_down_the_layers() -> None:
    for path in PACKAGE.glob("*.py"):
        own = _layer_of(path.stem)
        if own is None:
            continue
        tree = ast.parse(path.read_text())
        # Module-level imports only: `if TYPE_CHECKING:` imports never run.
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                target = node.module.split(".")[0]
                depth = _layer_of(target)
                if depth is not None:
                    assert depth <= own, f"{path.name} imports {target}, a higher layer"
