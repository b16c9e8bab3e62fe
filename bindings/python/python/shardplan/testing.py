"""shardplan as a reference for other runtimes' resharding tests.

:func:`expected_slice` says what a rank must hold; the Hypothesis
strategies (``pip install shardplan[testing]``) generate meshes, tensor
shapes (uneven ones included), layouts in each notation and strategy pairs,
so a DTensor-, JAX- or MindSpore-based runtime can property-test its
resharding against shardplan:

>>> import numpy as np, shardplan as sp
>>> from shardplan.testing import expected_slice
>>> mesh = sp.DeviceMesh(shape=[2], axes=["tp"])
>>> s = sp.Strategy("s", mesh, {"w": (sp.Layout.from_placements(mesh, [3, 2], ["Shard(0)"]), "f32")})
>>> expected_slice(s, "w", 1, np.arange(6).reshape(3, 2))
array([[4, 5]])
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import DeviceMesh, Layout, LayoutError, Strategy

__all__ = [
    "expected_slice",
    "layouts",
    "meshes",
    "mindspore_layouts",
    "partition_spec_layouts",
    "placement_layouts",
    "shapes",
    "strategies",
    "strategy_pairs",
]


def expected_slice(strategy: Strategy, tensor: str, rank: int, full: np.ndarray) -> Optional[np.ndarray]:
    """The block of ``full`` (the whole tensor) that ``rank`` holds under
    ``strategy``, or ``None`` when it holds none of it."""
    if tuple(full.shape) != tuple(strategy.shape(tensor)):
        raise ValueError(
            f"`{tensor}` is {tuple(strategy.shape(tensor))} in strategy `{strategy.name}` "
            f"but the array is {tuple(full.shape)}"
        )
    region = strategy.region(tensor, rank)
    if region is None:
        return None
    offset, extent = region
    return full[tuple(slice(o, o + e) for o, e in zip(offset, extent))]


try:
    from hypothesis import assume
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the strategies need hypothesis
    st = None


def _need_hypothesis() -> None:
    if st is None:
        raise ImportError("shardplan.testing's strategies need hypothesis: pip install shardplan[testing]")


AXIS_NAMES = ("dp", "tp", "pp", "sp", "ep")


def meshes(max_axes: int = 3, max_size: int = 4, max_ranks: int = 16) -> "st.SearchStrategy[DeviceMesh]":
    """Device meshes of 0 to ``max_axes`` axes, each of size 1 to
    ``max_size``, at most ``max_ranks`` ranks."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> DeviceMesh:
        n = draw(st.integers(0, max_axes))
        sizes: List[int] = []
        for _ in range(n):
            room = max_ranks // max(1, int(np.prod(sizes, dtype=np.int64)))
            sizes.append(draw(st.integers(1, max(1, min(max_size, room)))))
        return DeviceMesh(shape=sizes, axes=list(AXIS_NAMES[:n]))

    return build()


def shapes(max_dims: int = 3, max_side: int = 12) -> "st.SearchStrategy[List[int]]":
    """Tensor shapes of 0 to ``max_dims`` dimensions, sides 1 to
    ``max_side`` (many not divisible by a mesh axis: uneven splits)."""
    _need_hypothesis()
    return st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims)


def _axis_assignment(draw: Any, mesh: DeviceMesh, ndim: int) -> List[Optional[int]]:
    """For each mesh axis, the tensor dimension it splits (or None)."""
    return [draw(st.one_of(st.none(), st.integers(0, ndim - 1))) if ndim else None for _ in mesh.axes]


def placement_layouts(mesh: DeviceMesh, shape: Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts written as DTensor placements (``Shard(d)``, ``Replicate()``);
    a dimension split by one axis may be uneven (``torch.chunk`` blocks)."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> Layout:
        dims = _axis_assignment(draw, mesh, len(shape))
        placements = ["Replicate()" if d is None else f"Shard({d})" for d in dims]
        try:
            return Layout.from_placements(mesh, list(shape), placements)
        except LayoutError:
            assume(False)
            raise

    return build()


def partition_spec_layouts(mesh: DeviceMesh, shape: Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts written as JAX ``PartitionSpec``s (even splits only)."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> Layout:
        dims = _axis_assignment(draw, mesh, len(shape))
        entries: List[Tuple[str, ...]] = [tuple(a for a, d in zip(mesh.axes, dims) if d == k) for k in range(len(shape))]
        text = "P(" + ", ".join("None" if not e else "(" + ", ".join(repr(a) for a in e) + ",)" for e in entries) + ")"
        try:
            return Layout.from_partition_spec(mesh, list(shape), text)
        except LayoutError:
            assume(False)
            raise

    return build()


def mindspore_layouts(shape: Sequence[int], max_ranks: int = 16) -> "st.SearchStrategy[Layout]":
    """Layouts written as MindSpore ``dev_matrix`` / ``tensor_map``, with
    an optimizer shard sometimes (on their own mesh, ``d<k>`` axes)."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> Layout:
        n = draw(st.integers(1, 3))
        dev = [draw(st.integers(1, 4)) for _ in range(n)]
        assume(int(np.prod(dev)) <= max_ranks)
        free = list(range(n))
        tensor_map = []
        for _ in shape:
            if free and draw(st.booleans()):
                k = draw(st.sampled_from(free))
                free.remove(k)
                tensor_map.append(k)
            else:
                tensor_map.append(-1)
        opt = draw(st.sampled_from([0, 0, -1, 2]))
        try:
            return Layout.from_mindspore(list(shape), dev_matrix=dev, tensor_map=tensor_map, opt_weight_shard_size=opt)
        except LayoutError:
            assume(False)
            raise

    return build()


def layouts(mesh: DeviceMesh, shape: Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts on ``mesh`` in the DTensor or the JAX notation."""
    _need_hypothesis()
    return st.one_of(placement_layouts(mesh, shape), partition_spec_layouts(mesh, shape))


def strategies(
    mesh: DeviceMesh, tensors: Dict[str, Tuple[Sequence[int], str]], name: str = "s"
) -> "st.SearchStrategy[Strategy]":
    """Strategies on ``mesh`` over ``tensors`` (``{name: (shape, dtype)}``)."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> Strategy:
        laid = {t: (draw(layouts(mesh, shape)), dtype) for t, (shape, dtype) in tensors.items()}
        return Strategy(name, mesh, laid)

    return build()


def strategy_pairs(max_tensors: int = 3) -> "st.SearchStrategy[Tuple[Strategy, Strategy]]":
    """A source and a destination strategy over the same tensors, on two
    independent meshes (any rank counts: N to M)."""
    _need_hypothesis()

    @st.composite
    def build(draw: Any) -> Tuple[Strategy, Strategy]:
        n = draw(st.integers(1, max_tensors))
        tensors = {
            f"t{i}": (draw(shapes()), draw(st.sampled_from(["f32", "bf16", "f16", "i32", "u8"]))) for i in range(n)
        }
        src = draw(strategies(draw(meshes()), tensors, "src"))
        dst = draw(strategies(draw(meshes()), tensors, "dst"))
        return src, dst

    return build()
