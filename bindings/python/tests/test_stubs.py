"""The type stubs name exactly what the extension defines, with the
signatures it has (parameter names, kinds, defaults), and every public item
has a docstring."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import shardplan as sp
from shardplan import _shardplan

STUB = Path(sp.__file__).with_name("_shardplan.pyi")


def stub_names():
    tree = ast.parse(STUB.read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {
                n.name if isinstance(n, ast.FunctionDef) else n.target.id
                for n in node.body
                if isinstance(n, ast.FunctionDef) or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
            }
    return top, members


def public(names):
    return {n for n in names if not n.startswith("__")}


def test_stub_lists_every_item_of_the_extension():
    top, members = stub_names()
    assert public(dir(_shardplan)) == public(top)
    for cls, names in members.items():
        if issubclass(getattr(_shardplan, cls), BaseException):
            continue  # the exceptions' members are BaseException's and their attributes
        actual = public(dir(getattr(_shardplan, cls)))
        assert actual == public(names), f"{cls}: {sorted(actual ^ public(names))}"


def test_public_items_have_docstrings():
    for name in sp.__all__:
        item = getattr(sp, name)
        assert inspect.getdoc(item), f"shardplan.{name} has no docstring"
        if inspect.isclass(item) and not issubclass(item, BaseException):
            for attr in public(dir(item)):
                if attr.startswith("_"):
                    continue
                member = getattr(item, attr)
                if callable(member) or isinstance(member, property):
                    assert inspect.getdoc(member), f"shardplan.{name}.{attr} has no docstring"


def stub_functions():
    """``(qualified name, ast.FunctionDef)`` of every function and method
    of the stub, properties and dunders other than ``__init__`` left out."""
    tree = ast.parse(STUB.read_text())
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            for n in node.body:
                if not isinstance(n, ast.FunctionDef):
                    continue
                if any(isinstance(d, ast.Name) and d.id == "property" for d in n.decorator_list):
                    continue
                if n.name.startswith("__") and n.name != "__init__":
                    continue
                out.append((f"{node.name}.{n.name}", n))
    return out


def stub_params(fn: ast.FunctionDef, method: bool):
    """The stub's parameters as ``(name, kind, default)``; a default of
    ``...`` is ``Ellipsis`` (any)."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if method:
        positional = positional[1:]  # self; a staticmethod has none
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = []
    for arg, d in zip(positional, defaults):
        out.append((arg.arg, "positional", _default(d)))
    if a.vararg:
        out.append((a.vararg.arg, "*args", inspect.Parameter.empty))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "keyword", _default(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, "**kwargs", inspect.Parameter.empty))
    return out


def _default(node):
    if node is None:
        return inspect.Parameter.empty
    return ast.literal_eval(node)


KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def runtime_params(qualname: str):
    """The extension's parameters as ``(name, kind, default)``; pyo3 writes
    a default it cannot spell as ``...``."""
    cls, _, name = qualname.rpartition(".")
    if cls:
        owner = getattr(_shardplan, cls)
        if name == "__init__" and not issubclass(owner, BaseException):
            obj, static = owner, True  # a pyclass's constructor is its signature
        else:
            obj = getattr(owner, name)
            static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    else:
        obj, static = getattr(_shardplan, name), True
    params = list(inspect.signature(obj).parameters.values())
    if not static:
        params = params[1:]  # self
    return [(p.name, KINDS[p.kind], p.default) for p in params]


@pytest.mark.parametrize("qualname,fn", [pytest.param(q, f, id=q) for q, f in stub_functions()])
def test_stub_signature_is_the_extensions(qualname, fn):
    stub = stub_params(fn, method="." in qualname and not _is_static(fn))
    actual = runtime_params(qualname)
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in actual], qualname
    for (name, _, want), (_, _, have) in zip(stub, actual):
        if want is Ellipsis or have is Ellipsis:
            continue  # a default one side cannot spell
        assert want == have, f"{qualname}: default of {name}: stub {want!r}, extension {have!r}"


def _is_static(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
