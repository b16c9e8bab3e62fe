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

import typing as _t

import numpy as _np

import shardplan as _sp

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


def expected_slice(strategy: _sp.Strategy, tensor: str, rank: int, full: _np.ndarray) -> _t.Optional[_np.ndarray]:
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
    from hypothesis import assume as _assume
    from hypothesis import strategies as _st
except ImportError:  # pragma: no cover - the strategies need hypothesis
    _st = None


def _need_hypothesis() -> None:
    if _st is None:
        raise ImportError("shardplan.testing's strategies need hypothesis: pip install shardplan[testing]")


_AXIS_NAMES = ("dp", "tp", "pp", "sp", "ep")


def meshes(max_axes: int = 3, max_size: int = 4, max_ranks: int = 16) -> "st.SearchStrategy[DeviceMesh]":
    """Device meshes of 0 to ``max_axes`` axes, each of size 1 to
    ``max_size``, at most ``max_ranks`` ranks."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _sp.DeviceMesh:
        n = draw(_st.integers(0, max_axes))
        sizes: _t.List[int] = []
        for _ in range(n):
            room = max_ranks // max(1, int(_np.prod(sizes, dtype=_np.int64)))
            sizes.append(draw(_st.integers(1, max(1, min(max_size, room)))))
        return _sp.DeviceMesh(shape=sizes, axes=list(_AXIS_NAMES[:n]))

    return build()


def shapes(max_dims: int = 3, max_side: int = 12) -> "st.SearchStrategy[List[int]]":
    """Tensor shapes of 0 to ``max_dims`` dimensions, sides 1 to
    ``max_side`` (many not divisible by a mesh axis: uneven splits)."""
    _need_hypothesis()
    return _st.lists(_st.integers(1, max_side), min_size=0, max_size=max_dims)


def _axis_assignment(draw: _t.Any, mesh: _sp.DeviceMesh, ndim: int) -> _t.List[_t.Optional[int]]:
    """For each mesh axis, the tensor dimension it splits (or None)."""
    return [draw(_st.one_of(_st.none(), _st.integers(0, ndim - 1))) if ndim else None for _ in mesh.axes]


def placement_layouts(mesh: _sp.DeviceMesh, shape: _t.Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts written as DTensor placements (``Shard(d)``, ``Replicate()``);
    a dimension split by one axis may be uneven (``torch.chunk`` blocks)."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _sp.Layout:
        dims = _axis_assignment(draw, mesh, len(shape))
        placements = ["Replicate()" if d is None else f"Shard({d})" for d in dims]
        try:
            return _sp.Layout.from_placements(mesh, list(shape), placements)
        except _sp.LayoutError:
            _assume(False)
            raise

    return build()


def partition_spec_layouts(mesh: _sp.DeviceMesh, shape: _t.Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts written as JAX ``PartitionSpec``s (even splits only)."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _sp.Layout:
        dims = _axis_assignment(draw, mesh, len(shape))
        entries: _t.List[_t.Tuple[str, ...]] = [tuple(a for a, d in zip(mesh.axes, dims) if d == k) for k in range(len(shape))]
        text = "P(" + ", ".join("None" if not e else "(" + ", ".join(repr(a) for a in e) + ",)" for e in entries) + ")"
        try:
            return _sp.Layout.from_partition_spec(mesh, list(shape), text)
        except _sp.LayoutError:
            _assume(False)
            raise

    return build()


def mindspore_layouts(shape: _t.Sequence[int], max_ranks: int = 16) -> "st.SearchStrategy[Layout]":
    """Layouts written as MindSpore ``dev_matrix`` / ``tensor_map``, with
    an optimizer shard sometimes (on their own mesh, ``d<k>`` axes)."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _sp.Layout:
        n = draw(_st.integers(1, 3))
        dev = [draw(_st.integers(1, 4)) for _ in range(n)]
        _assume(int(_np.prod(dev)) <= max_ranks)
        free = list(range(n))
        tensor_map = []
        for _ in shape:
            if free and draw(_st.booleans()):
                k = draw(_st.sampled_from(free))
                free.remove(k)
                tensor_map.append(k)
            else:
                tensor_map.append(-1)
        opt = draw(_st.sampled_from([0, 0, -1, 2]))
        try:
            return _sp.Layout.from_mindspore(list(shape), dev_matrix=dev, tensor_map=tensor_map, opt_weight_shard_size=opt)
        except _sp.LayoutError:
            _assume(False)
            raise

    return build()


def layouts(mesh: _sp.DeviceMesh, shape: _t.Sequence[int]) -> "st.SearchStrategy[Layout]":
    """Layouts on ``mesh`` in the DTensor or the JAX notation."""
    _need_hypothesis()
    return _st.one_of(placement_layouts(mesh, shape), partition_spec_layouts(mesh, shape))


def strategies(
    mesh: _sp.DeviceMesh, tensors: _t.Dict[str, _t.Tuple[_t.Sequence[int], str]], name: str = "s"
) -> "st.SearchStrategy[Strategy]":
    """Strategies on ``mesh`` over ``tensors`` (``{name: (shape, dtype)}``)."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _sp.Strategy:
        laid = {t: (draw(layouts(mesh, shape)), dtype) for t, (shape, dtype) in tensors.items()}
        return _sp.Strategy(name, mesh, laid)

    return build()


def strategy_pairs(max_tensors: int = 3) -> "st.SearchStrategy[Tuple[Strategy, Strategy]]":
    """A source and a destination strategy over the same tensors, on two
    independent meshes (any rank counts: N to M)."""
    _need_hypothesis()

    @_st.composite
    def build(draw: _t.Any) -> _t.Tuple[_sp.Strategy, _sp.Strategy]:
        n = draw(_st.integers(1, max_tensors))
        tensors = {
            f"t{i}": (draw(shapes()), draw(_st.sampled_from(sorted(_sp._DTYPES)))) for i in range(n)
        }
        src = draw(strategies(draw(meshes()), tensors, "src"))
        dst = draw(strategies(draw(meshes()), tensors, "dst"))
        return src, dst

    return build()


del annotations  # the __future__ import binds it; only __all__ is public
