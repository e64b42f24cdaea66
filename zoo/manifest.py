"""The explicit list of component modules.

Importing a module listed here runs its ``@REGISTRY.register`` decorators. The registries load this
list on their first lookup, so ``import zoo`` stays cheap and no component package is imported
statically by ``zoo``. ``tests/test_registry.py`` fails when a module under a component package is
missing from this list: add new modules here, in the family's fixed order.
"""

COMPONENT_MODULES: tuple[str, ...] = ()
