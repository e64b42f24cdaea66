import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from zoo.errors import ConfigError
from zoo.manifest import COMPONENT_MODULES
from zoo.registry import REGISTRIES, Registry

ROOT = Path(__file__).resolve().parents[1]
COMPONENT_PACKAGES = ("encoders", "connectors", "heads", "recipes")
PACKAGES_WITH_REGISTRATIONS = COMPONENT_PACKAGES + ("zoo",)


def make_registry():
    reg = Registry("widget")

    @reg.register
    def test_widget(width: int = 2):
        return {"width": width}

    @reg.register(name="big_widget")
    def build_big():
        return "big"

    return reg


def test_register_get_build_list():
    reg = make_registry()
    assert reg.build("test_widget", width=5) == {"width": 5}
    assert reg.get("big_widget")() == "big"
    assert reg.list() == ["big_widget", "test_widget"]
    assert reg.list("test_*") == ["test_widget"]
    assert "test_widget" in reg and "nope" not in reg


def test_unknown_name_suggests_close_matches():
    reg = make_registry()
    with pytest.raises(ConfigError) as info:
        reg.get("test_widgte")
    message = str(info.value)
    assert "unknown widget 'test_widgte'" in message
    assert "Did you mean: test_widget" in message


def test_duplicate_registration_raises():
    reg = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        @reg.register(name="test_widget")
        def other():
            return None


def test_reregistering_the_same_function_is_harmless():
    reg = Registry("widget")

    def f():
        return 1

    reg.register(f)
    reg.register(f)
    assert reg.list() == ["f"]


def test_every_registry_kind_exists():
    assert set(REGISTRIES) == {"encoder", "bridge", "connector", "head", "lm", "recipe",
                               "dataset", "task"}


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=package + ".")
            if not m.ispkg]


def test_manifest_lists_every_component_module():
    missing = [m for pkg in COMPONENT_PACKAGES for m in _modules(pkg)
               if m not in COMPONENT_MODULES and not m.rsplit(".", 1)[-1].startswith("_")]
    assert not missing, f"add to zoo/manifest.py: {missing}"


def test_manifest_lists_every_module_that_registers():
    pattern = re.compile(r"^@[A-Z_]+\.register", re.M)
    missing = []
    for pkg in PACKAGES_WITH_REGISTRATIONS:
        for path in (ROOT / pkg).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if pattern.search(path.read_text()) and module not in COMPONENT_MODULES:
                missing.append(module)
    assert not missing, f"add to zoo/manifest.py: {missing}"


def test_manifest_modules_import_and_register():
    for module in COMPONENT_MODULES:
        importlib.import_module(module)
    assert len(set(COMPONENT_MODULES)) == len(COMPONENT_MODULES), "duplicate manifest entry"


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_builders_have_docstrings(kind):
    for name in REGISTRIES[kind].list():
        assert REGISTRIES[kind].get(name).__doc__, f"{kind} {name!r} has no docstring"


COMPONENT_IMPORT = re.compile(r"^\s*(from|import) (encoders|connectors|heads|recipes)\b", re.M)


def test_zoo_reaches_components_through_the_registries():
    """Besides the manifest, only the format adapters of released weights (zoo/pretrained, which
    know the components' key layouts) import a component package."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "zoo").rglob("*.py")
                 if COMPONENT_IMPORT.search(p.read_text()) and p.name != "manifest.py"
                 and "pretrained" not in p.parts]
    assert not offenders


def test_shared_helpers_are_defined_once():
    definition = re.compile(r"^(Grid|Size3) = |^def _?(triple|positive_int)\(", re.M)
    found = {str(p.relative_to(ROOT)): definition.findall(p.read_text())
             for pkg in ("zoo", "encoders", "connectors", "heads", "recipes")
             for p in (ROOT / pkg).rglob("*.py")}
    assert {f: d for f, d in found.items() if d} == {
        "zoo/types.py": [("Grid", ""), ("Size3", "")],
        "zoo/checks.py": [("", "positive_int"), ("", "triple")]}
