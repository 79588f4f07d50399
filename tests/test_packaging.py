"""What `pip install steplog` puts on a machine: one top-level package, `steplog`, with the
schema files inside it; and the source keeps each layer's imports one way (no cycles, no
private names reached across modules)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.on_disk import ROOT

LAYERS = ("eventstore", "projections", "commands", "providers", "executor", "steplog")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


@pytest.mark.slow
def test_the_repository_holds_no_symlinks_and_no_leftover_pid_files():
    rows = tracked_files()
    assert rows, "not a git checkout"
    assert [r for r in rows if r.startswith("120000")] == []
    assert [r for r in rows if r.endswith(".pid")] == []


@pytest.mark.slow
def test_the_wheel_installs_only_steplog_with_its_schema_and_runs_from_it(tmp_path):
    source = tmp_path / "src"
    for row in tracked_files():
        name = row.split("\t", 1)[1]
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    assert b"absent from the `packages` configuration" not in built.stderr
    (wheel,) = (tmp_path / "dist").glob("steplog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["steplog"]
        assert {n.split("/")[0] for n in names} == {"steplog", dist_info}
        record = archive.read(f"{dist_info}/RECORD").decode()
        assert {line.split("/")[0] for line in record.splitlines()} == {"steplog", dist_info}
        # real files, equal to the one definition
        for sql in ("schema.sql", "migrations.sql", "schema_postgres.sql"):
            assert archive.read(f"steplog/eventstore/{sql}") == (ROOT / sql).read_bytes()
        assert "steplog/py.typed" in names and "steplog/__main__.py" in names
        web = sorted(
            n for n in names if n.startswith(("steplog/web/static/", "steplog/web/templates/"))
        )
        assert web == sorted(
            f"steplog/{p.relative_to(ROOT).as_posix()}"
            for folder in ("web/static", "web/templates")
            for p in (ROOT / folder).iterdir()
            if p.is_file()
        )
        assert (
            "steplog = steplog.commands.cli:main"
            in archive.read(f"{dist_info}/entry_points.txt").decode()
        )
        archive.extractall(tmp_path / "site")
    # the unpacked wheel and the dependencies, without site's .pth files (the editable
    # install's finder would lend this checkout's modules): only the wheel's steplog runs
    deps = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{deps}", "PATH": "/usr/bin:/bin"}
    example = ROOT / "examples" / "factory" / "pipeline.toml"
    run = subprocess.run(
        [sys.executable, "-S", "-m", "steplog", "--db", "w.db", "run", str(example), "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import steplog.eventstore.sqlite as s; print(s.SCHEMA_PATH)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == tmp_path / "site" / "steplog" / "eventstore" / "schema.sql"


def test_no_top_level_module_of_the_card_is_importable_as_such_once_steplog_runs():
    import steplog.commands.cli  # noqa: F401

    assert not set(LAYERS[:-1]) & set(sys.modules)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "steplog" else ["steplog", *parts])


def source_modules() -> dict[str, ast.Module]:
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            found[module_name(path)] = ast.parse(path.read_text(), str(path))
    return found


def module_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Imports run when the module loads: not those inside functions or `if TYPE_CHECKING`."""
    out: list[ast.ImportFrom | ast.Import] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.Try):
            out.extend(n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, tree in source_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steplog"):
                offenders += [
                    f"{name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
    assert offenders == []


def test_the_modules_import_each_other_without_a_cycle():
    modules = source_modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        deps = set()
        for node in module_level_imports(tree):
            targets = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            )
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    # a package's __init__ importing its own submodules is how packages load, not a cycle
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, [*path, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
