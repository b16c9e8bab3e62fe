"""shardplan.testing: the Hypothesis strategies give valid values in each
notation, and expected_slice is what the layout says a rank holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardplan as sp
from shardplan import testing as spt

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(spt.meshes())
def test_meshes(mesh):
    assert len(mesh.axes) <= 3 and mesh.size <= 16


@SETTINGS
@given(st.data())
def test_each_notation_gives_a_layout_of_the_shape(data):
    mesh = data.draw(spt.meshes())
    shape = data.draw(spt.shapes())
    for make in (spt.placement_layouts, spt.partition_spec_layouts):
        lay = data.draw(make(mesh, shape))
        assert lay.shape == shape and lay.mesh == mesh
    ms = data.draw(spt.mindspore_layouts([4, 8, 2]))
    assert ms.shape == [4, 8, 2]


@SETTINGS
@given(spt.strategy_pairs())
def test_pairs_plan_and_expected_slices_tile_each_tensor(pair):
    src, dst = pair
    plan = sp.plan(src, dst)
    plan.verify()
    s = plan.summary
    assert s["total_bytes"] == s["lower_bound_bytes"]
    for name in dst.tensors:
        shape = dst.shape(name)
        full = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
        seen = np.zeros(shape, dtype=np.int64)
        for rank in range(dst.mesh.size):
            block = spt.expected_slice(dst, name, rank, full)
            if block is None:
                continue
            off, ext = dst.region(name, rank)
            seen[tuple(slice(o, o + e) for o, e in zip(off, ext))] += 1
            assert block.shape == tuple(ext)
        # Every element is held by at least one rank.
        assert (seen >= 1).all()


def test_uneven_shapes_are_generated():
    found = []

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def look(data):
        mesh = sp.DeviceMesh(shape=[4], axes=["tp"])
        shape = data.draw(spt.shapes(max_dims=1))
        if shape and shape[0] % 4:
            found.append(data.draw(spt.placement_layouts(mesh, shape)))

    look()
    assert found, "no uneven shape in 100 examples"


def test_expected_slice_refuses_an_array_of_another_shape():
    mesh = sp.DeviceMesh(shape=[2], axes=["tp"])
    s = sp.Strategy("s", mesh, {"w": (sp.Layout.from_placements(mesh, [3, 2], ["Shard(0)"]), "f32")})
    assert spt.expected_slice(s, "w", 1, np.arange(6).reshape(3, 2)).tolist() == [[4, 5]]
    with pytest.raises(ValueError):
        spt.expected_slice(s, "w", 0, np.zeros((2, 2)))
