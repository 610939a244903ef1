"""The code's shape: no import cycle anywhere in tasks/ or flows/ (function-level imports included), each role in its
own subpackage, techniques and runtimes apart, and no Prefect/MLflow in the measuring child processes."""

import subprocess
import sys

import grimp

from tasks import PROJECT_ROOT


def test_no_import_cycle():
    graph = grimp.build_graph("tasks", "flows", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_roles_do_not_import_upwards():
    graph = grimp.build_graph("tasks", "flows", cache_dir=None)
    # core is imported by everything and imports no role package; compress knows nothing of measuring or long
    # documents; measuring runs any technique's output but is not used by compress; nothing in tasks/ imports a flow
    illegal = graph.find_illegal_dependencies_for_layers(
        layers=["flows", "tasks.longdoc", "tasks.measure", "tasks.compress", "tasks.core"], containers=None)
    assert not illegal, [f"{d.importer} -> {d.imported}" for d in illegal]


def test_every_module_is_in_a_role_package():
    flat = sorted(p.name for p in (PROJECT_ROOT / "tasks").glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules directly in tasks/ (put each in core/, compress/, measure/ or longdoc/): {flat}"


def test_measuring_children_load_neither_prefect_nor_mlflow():
    code = ("import sys, tasks.measure.latency, tasks.longdoc.scaling_probe; "
            "print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
