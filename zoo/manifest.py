"""The explicit list of component modules.

Importing a module listed here runs its ``@REGISTRY.register`` decorators. The registries load this
list on their first lookup, so ``import zoo`` stays cheap and no component package is imported
statically by ``zoo``. ``tests/test_registry.py`` fails when a module under a component package (or a
``zoo`` module that registers something) is missing from this list. Keep each family's fixed order.
"""

COMPONENT_MODULES: tuple[str, ...] = (
    # data sets and tasks (zoo.data)
    # encoders: native 3D ViTs, slice-inflated 2D towers, TGH-MoE, 3D backbones, bridges
    # connectors
    # heads and language models
    # recipes
)
