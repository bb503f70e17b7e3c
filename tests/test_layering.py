"""Imports flow one way: worldsim <- engine <- export; controllers use only the public engine/worldsim API."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worldsim", "engine", "export", "controllers")
# what each package may import from the others
ALLOWED = {
    "worldsim": set(),
    "engine": {"worldsim"},
    "export": {"worldsim", "engine"},
    "controllers": {"worldsim", "engine"},
}
# controllers see only the public surface: the package roots and these modules
PUBLIC = {"engine", "engine.loop", "engine.testing", "engine.backends", "worldsim.actions", "worldsim.io", "worldsim.config"}
# the CLI dispatcher names subcommand modules as strings; it imports none of them at module level
CLI = ROOT / "worldsim" / "cli.py"


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


def test_imports_flow_one_way():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod, line in _imports(path):
                top = mod.split(".")[0]
                if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} ({pkg} may import {sorted(ALLOWED[pkg]) or 'nothing'})")
                if pkg == "controllers" and top == "engine" and mod not in PUBLIC:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports engine internals {mod}")
    assert not bad, "\n".join(bad)


def test_cli_dispatches_by_name_only():
    from worldsim.cli import COMMANDS

    assert not [m for m, _ in _imports(CLI) if m.split(".")[0] in PACKAGES]
    for name, (module, _) in COMMANDS.items():
        top = module.split(".")[0]
        assert top in PACKAGES, (name, module)
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), f"subcommand {name}: {module} missing"


def test_checker_catches_a_violation(tmp_path):
    """The checker itself works: a file with a backwards import is reported."""
    f = tmp_path / "x.py"
    f.write_text("from engine.world import World\nimport export.cli\n")
    mods = [m for m, _ in _imports(f)]
    assert mods == ["engine.world", "export.cli"]


def test_help_lists_every_subcommand(capsys):
    from worldsim.cli import COMMANDS, main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
