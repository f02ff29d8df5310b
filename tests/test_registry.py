"""Registries: the packages that register methods, models and packable modules are declared as entry points,
imported on the first lookup; a package outside deepshrink adds its own the same way."""
import subprocess
import sys
from importlib.metadata import EntryPoint

from deepshrink import registry
from deepshrink.registry import Registry


def test_a_package_declared_as_an_entry_point_is_imported_on_the_first_lookup(tmp_path, monkeypatch):
    fresh = Registry("method")
    holder = tmp_path / "holder_of_registry.py"
    holder.write_text("REGISTRY = None\n")
    (tmp_path / "their_methods.py").write_text("import holder_of_registry\n"
                                               "holder_of_registry.REGISTRY.register('their-method', object())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import holder_of_registry

    holder_of_registry.REGISTRY = fresh
    declared = [EntryPoint(name="theirs", value="their_methods", group="deepshrink.methods")]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [e for e in declared if e.group == group])
    assert "their_methods" not in sys.modules
    assert "their-method" in fresh.names()  # imported by the lookup, with deepshrink's own packages
    assert "their_methods" in registry.declared_modules("deepshrink.methods")
    assert "deepshrink.quant" in registry.declared_modules("deepshrink.methods")


def test_every_package_that_registers_something_is_declared():
    """Importing every module of deepshrink registers nothing the declared packages did not: a package that
    registers methods, models or packable modules without being declared would be missing from lookups."""
    script = """
import importlib, pkgutil, deepshrink
from deepshrink.registry import METHODS, MODELS, PACKABLE
before = [r.names() for r in (METHODS, MODELS, PACKABLE)]
for module in pkgutil.walk_packages(deepshrink.__path__, "deepshrink."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print([sorted(set(r.names()) - set(b)) for r, b in zip((METHODS, MODELS, PACKABLE), before)])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[[], [], []]"
