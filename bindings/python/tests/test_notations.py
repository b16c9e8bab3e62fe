"""The three notations against boxes worked out by hand, and read back."""

from __future__ import annotations

import pytest

import shardplan as sp

MESH = sp.DeviceMesh(shape=[2, 4], axes=["dp", "tp"])

# (layout, rank, (offset, extent)) worked by hand for a [8, 4] tensor on
# dp=2 x tp=4 (rank = 4 * dp + tp).
CASES = [
    # DTensor: rows over tp, replicated over dp: rank 6 is tp 2 -> rows 4..6.
    (lambda: sp.Layout.from_placements(MESH, [8, 4], ["Replicate()", "Shard(0)"]), 6, ([4, 0], [2, 4])),
    # DTensor: Shard(1) over dp, Shard(0) over tp: rank 5 = dp 1, tp 1.
    (lambda: sp.Layout.from_placements(MESH, [8, 4], ["Shard(1)", "Shard(0)"]), 5, ([2, 2], [2, 2])),
    # DTensor uneven (torch.chunk): 7 rows over tp=4 -> 2, 2, 2, 1.
    (lambda: sp.Layout.from_placements(MESH, [7, 4], ["Replicate()", "Shard(0)"]), 3, ([6, 0], [1, 4])),
    # torch's own str() of a placement.
    (lambda: sp.Layout.from_placements(MESH, [8, 4], ["Replicate()", "Shard(dim=1)"]), 2, ([0, 2], [8, 1])),
    # JAX: rows over (dp, tp), dp major: rank 5 -> block 5 of 8.
    (lambda: sp.Layout.from_partition_spec(MESH, [8, 4], "P(('dp', 'tp'), None)"), 5, ([5, 0], [1, 4])),
    # JAX as a sequence of entries, as jax.sharding.PartitionSpec is.
    (lambda: sp.Layout.from_partition_spec(MESH, [8, 4], (None, "tp")), 7, ([0, 3], [8, 1])),
    (lambda: sp.Layout.from_partition_spec(MESH, [8, 4], ["dp"]), 4, ([4, 0], [4, 4])),
    # MindSpore: dev_matrix [2, 4], tensor_map [0, -1]: rows over the
    # rightmost axis (size 4), replicated over the other.
    (lambda: sp.Layout.from_mindspore([8, 4], dev_matrix=[2, 4], tensor_map=[0, -1]), 6, ([4, 0], [2, 4])),
    # ... with the optimizer shard over the 2 replicas: rank 6 (replica 1
    # of rows 4..6) holds the second row.
    (
        lambda: sp.Layout.from_mindspore(
            [8, 4], dev_matrix=[2, 4], tensor_map=[0, -1], opt_weight_shard_size=2, opt_weight_shard_step=4
        ),
        6,
        ([5, 0], [1, 4]),
    ),
    # MindSpore nested map: dim 0 over both axes ([1, 0]: axis 1 major).
    (lambda: sp.Layout.from_mindspore([8, 4], dev_matrix=[2, 4], tensor_map=[[1, 0], -1]), 5, ([5, 0], [1, 4])),
]


@pytest.mark.parametrize("make,rank,box", CASES)
def test_boxes_worked_by_hand(make, rank, box):
    lay = make()
    assert lay.region(rank) == box
    # Every element of the box is held by `rank`.
    (off, ext) = box
    assert rank in lay.holders(off)
    assert rank in lay.holders([o + e - 1 for o, e in zip(off, ext)])


def test_notations_agree_and_read_back():
    a = sp.Layout.from_placements(MESH, [8, 4], ["Replicate()", "Shard(0)"])
    b = sp.Layout.from_partition_spec(MESH, [8, 4], "P('tp', None)")
    assert a.same_placement(b)
    assert a.to_placements() == ["Replicate()", "Shard(0)"]
    assert b.to_partition_spec() == "P('tp', None)"
    ms = sp.Layout.from_mindspore([8, 4], dev_matrix=[2, 4], tensor_map=[0, -1])
    back = ms.to_mindspore()
    again = sp.Layout.from_mindspore([8, 4], **back)
    assert again.same_placement(ms)


def test_shards_list_each_block_with_its_holders():
    lay = sp.Layout.from_placements(MESH, [8, 4], ["Replicate()", "Shard(0)"])
    shards = lay.shards()
    assert len(shards) == 4
    assert shards[0] == (([0, 0], [2, 4]), [0, 4])
    assert lay.replica_count == 2


def test_mesh_coordinates():
    assert MESH.size == 8 and len(MESH) == 8
    assert MESH.coords(6) == [1, 2]
    assert MESH.rank_of([1, 2]) == 6
    assert MESH.shape == [2, 4] and MESH.axes == ["dp", "tp"]


@pytest.mark.parametrize(
    "make,code",
    [
        (
            lambda: sp.Layout.from_placements(MESH, [8, 4], ["Shard(2)", "Replicate()"]),
            "shardplan::notation::dtensor::shard_out_of_range",
        ),
        (
            lambda: sp.Layout.from_placements(MESH, [8, 4], ["Replicate()"]),
            "shardplan::notation::dtensor::placement_count",
        ),
        (
            lambda: sp.Layout.from_placements(MESH, [8, 4], ["Shard(x)", "Replicate()"]),
            "shardplan::notation::dtensor::not_a_placement",
        ),
        (lambda: sp.Layout.from_partition_spec(MESH, [8, 4], "P('ep', None)"), "shardplan::layout::unknown_axis"),
        (
            lambda: sp.Layout.from_partition_spec(MESH, [8, 4], "P('tp'"),
            "shardplan::notation::jax::not_a_partition_spec",
        ),
        (
            lambda: sp.Layout.from_mindspore([8, 4], dev_matrix=[2, 4], tensor_map=[2, -1]),
            "shardplan::notation::mindspore::map_entry_out_of_range",
        ),
        (
            lambda: sp.Layout.from_mindspore([8, 4], dev_matrix=[2, 4], tensor_map=[0]),
            "shardplan::notation::mindspore::tensor_map_length",
        ),
    ],
)
def test_bad_layouts_raise_layout_error_with_code_and_help(make, code):
    with pytest.raises(sp.LayoutError) as e:
        make()
    assert e.value.code == code
    assert e.value.help


def test_layouts_given_box_by_box():
    mesh = sp.DeviceMesh([3], ["rank"])
    # Rows 0..3 on rank 0, row 3 on ranks 1 and 2.
    lay = sp.Layout.from_boxes(mesh, [4, 2], {0: ([0, 0], [3, 2]), 1: ([3, 0], [1, 2]), 2: ([3, 0], [1, 2])})
    assert lay.holders([3, 1]) == [1, 2]
    assert lay.region(0) == ([0, 0], [3, 2])
    with pytest.raises(sp.LayoutError) as e:
        sp.Layout.from_boxes(mesh, [4, 2], {0: ([0, 0], [3, 2])})
    assert e.value.code == "shardplan::layout::box_gap"
    with pytest.raises(sp.LayoutError) as e:
        lay.to_placements()
    assert e.value.code == "shardplan::notation::dtensor::explicit"
