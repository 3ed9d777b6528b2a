"""Locks the public surface and keeps the import layering honest."""

import ast
import subprocess
import sys
from pathlib import Path

import ratelane

PACKAGE = Path(ratelane.__file__).parent

PUBLIC = [
    "PROFILES",
    "APIError",
    "BatchJob",
    "BatchRunOptions",
    "BreakerPolicy",
    "Client",
    "ConfigurationError",
    "ErrorInfo",
    "ExitReason",
    "FatalError",
    "FileRun",
    "FileRunOptions",
    "FileRunSummary",
    "InputError",
    "OutputLockedError",
    "Price",
    "Profile",
    "RatelaneError",
    "RedisLimiter",
    "Request",
    "RequestTimeout",
    "Result",
    "Results",
    "RetryPolicy",
    "RunStats",
    "TransportError",
    "Usage",
    "__version__",
    "arun_conversations",
    "arun_file",
    "arun_many",
    "asubmit_batch",
    "backoff_wait",
    "format_duration",
    "iter_results",
    "parse_duration",
    "run_conversations",
    "run_file",
    "run_many",
    "stream",
    "submit_batch",
]


def test_public_api_is_exactly_this() -> None:
    assert ratelane.__all__ == PUBLIC
    for name in PUBLIC:
        assert hasattr(ratelane, name), name


def test_every_module_is_private_and_typed() -> None:
    assert (PACKAGE / "py.typed").exists()
    for path in PACKAGE.glob("*.py"):
        assert path.name.startswith("_"), f"{path.name} should be private (prefix _)"
    for path in PACKAGE.iterdir():
        if path.is_dir() and path.name != "__pycache__":
            assert path.name.startswith("_") or path.name == "testing", path.name


# The tree is the design: each private package is one layer, and imports only
# point down. The fake server (testing/) stands beside the client: it may use
# the shared vocabulary in _core, nothing else, and nothing but the demo and
# fake-server subcommands of the CLI may import it.
LAYERS = [
    {"_core"},
    {"_http", "_limits", "_state"},
    {"_engine"},
    {"_api"},
    {"_files"},
    {"_cli", "__init__", "__main__"},
]
TESTING_MAY_IMPORT = {"_core", "testing"}
MAY_IMPORT_TESTING = {"_cli/demo.py", "_cli/main.py"}


def _layer_of(package: str) -> int | None:
    for depth, names in enumerate(LAYERS):
        if package in names:
            return depth
    return None


def _imported_packages(path: Path) -> list[tuple[str, bool]]:
    """Every ratelane package a module imports, anywhere in it, and whether at module level.

    Imports under ``if TYPE_CHECKING:`` never run and are left out.
    """
    relative = path.relative_to(PACKAGE)
    own_parts = relative.parts[:-1]
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    type_only.add(id(inner))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(own_parts[: len(own_parts) - (node.level - 1)])
                module = [*base, *(node.module.split(".") if node.module else [])]
                if node.module is None:
                    names = [".".join([*module, alias.name]) for alias in node.names]
                else:
                    names = [".".join(module)]
            elif node.module and node.module.startswith("ratelane."):
                names = [node.module.removeprefix("ratelane.")]
        elif isinstance(node, ast.Import):
            names = [
                alias.name.removeprefix("ratelane.")
                for alias in node.names
                if alias.name.startswith("ratelane.")
            ]
        for name in names:
            if name:
                found.append((name.split(".")[0], node in tree.body))
    return found


def _package_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_imports_only_point_down_the_layers() -> None:
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        own = _package_of(path)
        relative = path.relative_to(PACKAGE).as_posix()
        for target, _top_level in _imported_packages(path):
            checked += 1
            if own == "testing":
                assert target in TESTING_MAY_IMPORT, f"{relative} imports {target}"
                continue
            if target == "testing":
                assert relative in MAY_IMPORT_TESTING, f"{relative} imports the fake server"
                continue
            own_depth, depth = _layer_of(own), _layer_of(target)
            assert own_depth is not None, f"{relative}: package {own} has no layer"
            assert depth is not None, f"{relative} imports {target}, which has no layer"
            assert depth <= own_depth, f"{relative} imports {target}, a higher layer"
    assert checked > 50


def test_the_cli_imports_the_fake_server_only_inside_its_subcommands() -> None:
    for relative in MAY_IMPORT_TESTING:
        for target, top_level in _imported_packages(PACKAGE / relative):
            if target == "testing" and relative == "_cli/main.py":
                assert not top_level, "the CLI entry point must not import testing/ at start"


def test_no_import_circle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        graph.setdefault(relative.parts[0] if len(relative.parts) > 1 else relative.stem, set())
    for path in PACKAGE.rglob("*.py"):
        own = _package_of(path)
        for target, top_level in _imported_packages(path):
            if top_level and target != own and own not in ("__init__", "__main__"):
                graph[own].add(target)
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        assert node not in visiting, f"import circle: {' -> '.join([*visiting, node])}"
        if node in done:
            return
        visiting.append(node)
        for target in graph.get(node, ()):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_the_cli_loads_the_fake_server_only_for_demo_and_fake_server() -> None:
    probe = (
        "import sys, ratelane._cli.main as cli; "
        "cli.build_parser(sys.argv[1:]); "
        "print('ratelane.testing' in sys.modules)"
    )
    loaded = {
        command: subprocess.run(
            [sys.executable, "-c", probe, command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for command in ("run", "merge", "demo", "fake-server")
    }
    # demo loads it only when it runs (not for --help); fake-server defines its flags there.
    assert loaded == {"run": "False", "merge": "False", "demo": "False", "fake-server": "True"}
