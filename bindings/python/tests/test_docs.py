"""The examples of docs/python.md and the README's Python section run, in
order, from the repository root."""

from __future__ import annotations

import os
import re

import pytest

from conftest import REPO

FENCE = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("doc", ["docs/python.md", "README.md"])
def test_examples_run(doc, monkeypatch, capsys):
    text = (REPO / doc).read_text()
    blocks = FENCE.findall(text)
    assert blocks, f"{doc} has no python examples"
    monkeypatch.chdir(REPO)
    scope: dict = {"__name__": "docs"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{doc} example {i + 1}", "exec"), scope)
        except Exception as e:  # the block's number says which one failed
            raise AssertionError(f"{doc} example {i + 1} failed: {e!r}\n{block}") from e
    assert os.getcwd() == str(REPO)
