"""The type stubs name exactly what the extension defines, and every public
item has a docstring."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

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
