"""DTensor placements against PyTorch's own shard arithmetic.

Every random placement, including several mesh dimensions sharding one
tensor dimension unevenly (nested ``torch.chunk``), must give each rank the
box that ``torch.distributed.tensor._utils._compute_local_shape_and_global_offset``
computes. Runs whenever torch is importable; under ``CI=true`` torch is
required.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest

import shardplan as sp

try:
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - depends on the machine
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("torch is not importable: DTensor parity not checked", allow_module_level=True)

CASES = 400


def random_case(rng: random.Random):
    mesh_shape = [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
    shape = [rng.randint(0, 13) for _ in range(rng.randint(1, 3))]
    placements = []
    for _ in mesh_shape:
        kind = rng.random()
        if kind < 0.6:
            placements.append(f"Shard({rng.randrange(len(shape))})")
        elif kind < 0.9:
            placements.append("Replicate()")
        else:
            placements.append("Partial()")
    return mesh_shape, shape, placements


def torch_placement(text: str):
    if text.startswith("Shard("):
        return Shard(int(text[6:-1]))
    return Replicate() if text == "Replicate()" else Partial()


def torch_box(mesh_shape, shape, placements, coord):
    local, offset = _compute_local_shape_and_global_offset(
        shape, mesh_shape, list(coord), [torch_placement(p) for p in placements]
    )
    return list(offset), list(local)


def test_every_random_placement_matches_pytorch():
    rng = random.Random(20261202)
    nested_uneven = 0
    for _ in range(CASES):
        mesh_shape, shape, placements = random_case(rng)
        mesh = sp.DeviceMesh(mesh_shape, [f"m{i}" for i in range(len(mesh_shape))])
        layout = sp.Layout.from_placements(mesh, shape, placements)
        for d, size in enumerate(shape):
            sharding = [mesh_shape[i] for i, p in enumerate(placements) if p == f"Shard({d})"]
            n = 1
            for s in sharding:
                n *= s
            nested_uneven += len(sharding) > 1 and size % n != 0
        for rank, coord in enumerate(itertools.product(*[range(s) for s in mesh_shape])):
            offset, extent = layout.region(rank)
            t_offset, t_extent = torch_box(mesh_shape, shape, placements, coord)
            case = f"mesh {mesh_shape} shape {shape} {placements} coord {coord}"
            assert list(extent) == t_extent, case
            # An empty shard's offset is immaterial; compare where it holds data.
            if all(e > 0 for e in t_extent):
                assert list(offset) == t_offset, case
        # The placements read back from the layout are the ones given.
        assert [str(p) for p in layout.to_placements()] == placements
    # The cases DTensor's nested chunking produces are exercised.
    assert nested_uneven >= 20, nested_uneven
