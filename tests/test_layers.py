"""The package's layers: a module imports only from its own layer or the layers below it, at the top of
the file or inside a function alike, so that each folder can be read without the ones above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bmb_stream"
LAYERS = [  # bottom first
    {"errors", "config_checks", "redaction", "distributed"},
    {"method", "models"},
    {"algorithms"},
    {"config_schema"},
    {"storage"},
    {"datasets"},
    {"config", "config_messages"},
    {"evaluation"},
    {"shards"},
    {"simulation"},
    {"engine"},
    {"cli", "cli_args", "subcommands", "sweep", "inference", "__main__"},
]


def layer_of(dotted: str) -> int | None:
    """The layer of `bmb_stream.X...` (None for the package itself and for what is not ours)."""
    parts = dotted.split(".")
    if parts[0] != "bmb_stream" or len(parts) < 2:
        return None
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] if node.module != "bmb_stream" else [f"bmb_stream.{a.name}" for a in node.names]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        if path.name != "__init__.py" or path.parent != PACKAGE:
            assert layer_of("bmb_stream." + path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")) \
                is not None, path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_import_runs_up_a_layer(path):
    if path.parent == PACKAGE and path.name == "__init__.py":
        return
    own = layer_of("bmb_stream." + path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."))
    upward = [name for name in imports(path) if (layer := layer_of(name)) is not None and layer > own]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports from above: {upward}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bmb_stream.engine.run import Run\n")
    assert imports(module) == ["bmb_stream.engine.run"] and layer_of("bmb_stream.engine.run") > layer_of("bmb_stream.errors")
