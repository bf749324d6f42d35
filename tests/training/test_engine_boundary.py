"""The loop's boundary with the engine, read from the source: the loop asks the engine (built by
`megatiny.training.engine.build_engine`) a handful of things, and the ZeRO stage, precision and
layout of a run are each derived in one place."""
import ast
import functools
from pathlib import Path

MEGATINY = Path(__file__).resolve().parents[2] / "megatiny"


def _engine_methods_called(path: Path) -> set[str]:
    """Names `m` of every `self.engine.m(...)` call in `path`."""
    called = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "engine" \
                    and isinstance(owner.value, ast.Name) and owner.value.id == "self":
                called.add(node.func.attr)
    return called


@functools.cache
def _calls_by_file() -> dict[str, set[str]]:
    """File (relative to megatiny/) -> names of the functions and methods it calls."""
    calls = {}
    for path in sorted(MEGATINY.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None))
        calls[str(path.relative_to(MEGATINY))] = names
    return calls


def _call_sites(name: str, under: str = "training/") -> list[str]:
    """Files under megatiny/`under` (relative to megatiny/) that call a function named `name`."""
    return [path for path, names in _calls_by_file().items() if path.startswith(under) and name in names]


def test_the_loop_uses_at_most_six_engine_methods():
    called = _engine_methods_called(MEGATINY / "training" / "loop.py")
    assert called <= {"loss", "micro_step", "pipeline_step", "evaluate", "grad_norm"}, called
    assert len(called) <= 6


def test_the_loop_builds_no_deepspeed_engine_itself():
    tree = ast.parse((MEGATINY / "training" / "loop.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("deepspeed") for name in imported), imported


def test_zero_stage_precision_and_layout_of_a_run_are_each_derived_in_one_place():
    assert _call_sites("zero_stage", under="") == ["training/config.py"]  # RunConfig.plan
    assert _call_sites("resolve_precision") == ["training/config.py"]  # run_precision
    assert _call_sites("run_precision") == ["training/dry_run.py", "training/engine.py"]
    assert _call_sites("for_world") == ["training/config.py"]  # ParallelConfig.layout
    # (a checkpoint's recorded layout is read back in checkpoint/metadata.py: WorldLayout.layout)
