"""Every public name has a docstring with a runnable example (executed by pytest's
``--doctest-modules``, which this suite enables)."""

import inspect

import pytest

import jax_scg as scg

MODULES = {
    "jax_scg": scg,
    "distributions": scg.distributions,
    "estimators": scg.estimators,
    "baselines": scg.baselines,
}
PUBLIC = [
    (module_name, name)
    for module_name, module in MODULES.items()
    for name in module.__all__
    if not inspect.ismodule(getattr(module, name))
]


@pytest.mark.parametrize(("module_name", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_runnable_example(module_name, name):
    doc = inspect.getdoc(getattr(MODULES[module_name], name)) or ""
    assert ">>>" in doc, f"{module_name}.{name} has no example in its docstring"
