"""Only the names in ``__all__`` are public: a module's imports and helpers
are private (``_``-prefixed), so ``dir()`` and tab completion show the API."""

from __future__ import annotations

import importlib

import pytest

import shardplan as sp

SUBMODULES = {"testing", "torch"}


def public(module):
    return {n for n in dir(module) if not n.startswith("_")}


def test_package_shows_only_its_api():
    assert public(sp) - SUBMODULES == set(sp.__all__)
    assert all(hasattr(sp, n) for n in sp.__all__)


@pytest.mark.parametrize("name", sorted(SUBMODULES))
def test_submodule_shows_only_its_api(name):
    if name == "torch":
        pytest.importorskip("torch")
    module = importlib.import_module(f"shardplan.{name}")
    assert public(module) == set(module.__all__)
    assert all(hasattr(module, n) for n in module.__all__)


def test_dtypes_come_from_the_rust_table():
    from shardplan import _shardplan

    table = _shardplan._dtypes()
    assert [n for n, _ in table] == list(sp._DTYPES) and "bf16" in sp._DTYPES
    for name, width in table:
        d = sp.numpy_dtype(name)
        assert d.itemsize == width and sp.dtype_name(d) == name
    with pytest.raises(sp.UsageError):
        sp.numpy_dtype("c64")


def test_torch_dtypes_come_from_the_same_table():
    torch = pytest.importorskip("torch")
    import shardplan.torch as spt

    assert list(spt._TORCH_DTYPES) == list(sp._DTYPES)
    for name, (_, width) in sp._DTYPES.items():
        assert torch.empty((), dtype=spt._TORCH_DTYPES[name]).element_size() == width
