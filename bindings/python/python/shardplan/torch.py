"""Live redistribution over ``torch.distributed``: a verified shardplan plan
carried out between processes, N ranks to M, on any process group (gloo on
CPU, NCCL on GPUs).

Every process computes the same schedule from the same plan: pieces whose
source and destination are one process are copied locally; the others go
point to point (``batch_isend_irecv``) in rounds, packed per peer (one
message per peer per round), each round's send and receive bytes of every
process at most ``max_buffer_bytes`` (a piece larger than that is cut into
boxes that fit, down to single elements). No process holds more than its own
source and destination slices and one round's buffers.

Before anything moves, every process checks that all hold the same plan (a
hash agreed over the group) and that its source tensors have the shapes and
dtypes the plan expects; a fault anywhere raises on every process, naming
the tensor and rank, instead of hanging.

>>> import shardplan as sp, shardplan.torch as spt   # doctest: +SKIP
>>> plan = sp.plan(trainer_strategy, inference_strategy)  # doctest: +SKIP
>>> out = spt.redistribute(local, plan, src_ranks=range(8), dst_ranks=range(8, 12))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib as _hashlib
import itertools as _itertools
import math as _math
import typing as _t
from collections import defaultdict as _defaultdict

import torch as _torch
import torch.distributed as _dist

import shardplan as _sp

__all__ = [
    "IN_PLACE_BYTES",
    "Transfer",
    "layout_of",
    "modelled_time",
    "redistribute",
    "redistribute_dtensors",
    "schedule",
]

#: The torch dtype of each shardplan dtype name, from the package's one
#: dtype table (the Rust library's ``DType``).
_TORCH_DTYPES: _t.Dict[str, _torch.dtype] = {
    name: getattr(_torch, long_name) for name, (long_name, _) in _sp._DTYPES.items()
}

#: A box moved in one message: tensor index, source and destination mesh
#: ranks, its offset in the source and the destination local buffers, its
#: extent, its bytes, and whether it is received in place (large, and one
#: run of bytes in its destination).
_Chunk = _t.Tuple[int, int, int, _t.Tuple[int, ...], _t.Tuple[int, ...], _t.Tuple[int, ...], int, bool]

#: Chunks at least this large that are one run of bytes in their
#: destination go as their own message, straight into place; smaller ones
#: are packed, so that messages stay few.
IN_PLACE_BYTES = 64 << 10


def layout_of(dtensor: _t.Any) -> _sp.Layout:
    """A DTensor's mesh and placements as a shardplan layout (mesh ranks in
    the order of ``dtensor.device_mesh.mesh.flatten()``).

    ``_StridedShard`` placements (FSDP2 over tensor parallelism: a dimension
    cut over the later axis first) are taken where every rank's slice is one
    box, as it is when a plain ``Shard`` of the same dimension follows them;
    a slice of several boxes raises :class:`shardplan.UsageError`."""
    mesh = dtensor.device_mesh
    names = mesh.mesh_dim_names or tuple(f"m{i}" for i in range(mesh.ndim))
    spm = _sp.DeviceMesh(list(mesh.shape), list(names))
    return _layout(spm, list(dtensor.shape), list(dtensor.placements))


def _layout(mesh: _sp.DeviceMesh, shape: _t.List[int], placements: _t.List[_t.Any], name: str = "") -> _sp.Layout:
    from torch.distributed.tensor.placement_types import _StridedShard

    if not any(isinstance(p, _StridedShard) for p in placements):
        return _sp.Layout.from_placements(mesh, shape, [str(p) for p in placements])
    return _sp.Layout.from_boxes(mesh, shape, _strided_boxes(shape, mesh.shape, placements, name))


def _strided_boxes(
    shape: _t.Sequence[int], mesh_shape: _t.Sequence[int], placements: _t.Sequence[_t.Any], name: str = ""
) -> _t.Dict[int, _t.Tuple[_t.List[int], _t.List[int]]]:
    """Every mesh rank's box under placements that may hold
    ``_StridedShard``: the indices of each dimension that a rank holds, cut
    by torch's own split of each placement, axis after axis (as
    ``distribute_tensor`` cuts), must be one run."""
    from torch.distributed.tensor.placement_types import Partial, Shard, _StridedShard

    boxes: _t.Dict[int, _t.Tuple[_t.List[int], _t.List[int]]] = {}
    for rank, coord in enumerate(_itertools.product(*(range(n) for n in mesh_shape))):
        held = [_torch.arange(n) for n in shape]
        for axis, p in enumerate(placements):
            if isinstance(p, Partial):
                raise _sp.UsageError(
                    f"tensor `{name}`: partial sums next to _StridedShard",
                    code="shardplan::python::usage",
                    help="reduce the partial sums first",
                )
            if isinstance(p, _StridedShard):
                cut = _StridedShard(0, split_factor=p.split_factor)
            elif isinstance(p, Shard):
                cut = Shard(0)
            else:
                continue
            pieces, _ = cut._split_tensor(held[p.dim], mesh_shape[axis], with_padding=False, contiguous=False)
            held[p.dim] = pieces[coord[axis]]
        offset, extent = [], []
        for dim, idx in enumerate(held):
            start = int(idx[0]) if len(idx) else 0
            if not _torch.equal(idx, _torch.arange(start, start + len(idx))):
                raise _sp.UsageError(
                    f"tensor `{name}`: mesh rank {rank} holds rows {idx.tolist()} of dimension {dim}, "
                    f"not one run, under {[str(p) for p in placements]}",
                    code="shardplan::python::usage",
                    help="follow a _StridedShard with a Shard of the same dimension, "
                    "so that every rank's slice is one box",
                )
            offset.append(start)
            extent.append(len(idx))
        boxes[rank] = (offset, extent)
    return boxes


def _split(src_off, dst_off, extent, width: int, budget: int) -> _t.Iterable[_t.Tuple[tuple, tuple, tuple]]:
    """Boxes of at most ``budget`` bytes (at least one element) covering the
    box ``extent`` at ``src_off`` / ``dst_off``, cut along the outermost
    dimensions first."""
    total = _math.prod(extent) * width
    k = next((i for i, e in enumerate(extent) if e > 1), None)
    if total <= budget or k is None:
        # Fits, or is one element (which a smaller buffer carries alone).
        yield tuple(src_off), tuple(dst_off), tuple(extent)
        return
    inner = _math.prod(extent[k + 1 :]) * width
    step = max(1, budget // inner)
    for start in range(0, extent[k], step):
        n = min(step, extent[k] - start)
        s, d, e = list(src_off), list(dst_off), list(extent)
        s[k] += start
        d[k] += start
        e[k] = n
        if inner > budget:
            yield from _split(s, d, e, width, budget)
        else:
            yield tuple(s), tuple(d), tuple(e)


def _one_run(extent: _t.Sequence[int], shape: _t.Sequence[int]) -> bool:
    """Whether a box of ``extent`` in a row-major tensor of ``shape`` is one
    run of bytes: one element thick before its first thicker dimension, and
    whole in every dimension after it."""
    k = next((i for i, e in enumerate(extent) if e != 1), len(extent))
    return all(e == n for e, n in zip(extent[k + 1 :], shape[k + 1 :]))


def schedule(plan: _sp.Plan, src_ranks: _t.Sequence[int], dst_ranks: _t.Sequence[int], max_buffer_bytes: int):
    """The transfer of ``plan`` as every process computes it: the chunks
    each process copies locally (by process), and the rounds (a list of
    lists of ``(src_process, dst_process, chunk)``), each round's sends and
    receives per process at most ``max_buffer_bytes``."""
    if max_buffer_bytes < 1:
        raise _sp.UsageError(
            f"max_buffer_bytes is {max_buffer_bytes}",
            code="shardplan::python::usage",
            help="give a buffer of at least one element",
        )
    m = plan.to_numpy()
    widths = [_width(plan.dst.dtype(t)) for t in plan.tensors]
    dst_shapes = {}
    local: _t.Dict[int, _t.List[_Chunk]] = _defaultdict(list)
    remote: _t.List[_t.Tuple[int, int, _Chunk]] = []
    for row in m:
        if row["reduce"]:
            raise _sp.UsageError(
                f"tensor `{plan.tensors[int(row['tensor'])]}` is moved from partial sums",
                code="shardplan::python::usage",
                help="reduce partial sums before redistributing",
            )
        t, nd = int(row["tensor"]), int(row["ndim"])
        s, d = int(row["src_rank"]), int(row["dst_rank"])
        sp_, dp = src_ranks[s], dst_ranks[d]
        ext = [int(x) for x in row["extent"][:nd]]
        for so, do, e in _split(
            [int(x) for x in row["src_offset"][:nd]], [int(x) for x in row["dst_offset"][:nd]], ext, widths[t],
            max_buffer_bytes if sp_ != dp else 1 << 62,
        ):
            size = _math.prod(e) * widths[t]
            if sp_ == dp:
                local[sp_].append((t, s, d, so, do, e, size, False))
                continue
            if (t, d) not in dst_shapes:
                dst_shapes[t, d] = plan.dst.region(plan.tensors[t], d)[1]
            direct = size >= IN_PLACE_BYTES and _one_run(e, dst_shapes[t, d])
            remote.append((sp_, dp, (t, s, d, so, do, e, size, direct)))
    rounds: _t.List[_t.List[_t.Tuple[int, int, _Chunk]]] = []
    sent: _t.List[_t.Dict[int, int]] = []
    recv: _t.List[_t.Dict[int, int]] = []
    for sp_, dp, c in remote:
        size = c[6]
        for r in range(len(rounds) + 1):
            if r == len(rounds):
                rounds.append([])
                sent.append(_defaultdict(int))
                recv.append(_defaultdict(int))
            fits = sent[r][sp_] + size <= max_buffer_bytes and recv[r][dp] + size <= max_buffer_bytes
            # A chunk of one element larger than the buffer goes alone.
            alone = sent[r][sp_] == 0 and recv[r][dp] == 0
            if fits or alone:
                rounds[r].append((sp_, dp, c))
                sent[r][sp_] += size
                recv[r][dp] += size
                break
    return local, rounds


def modelled_time(
    plan: _sp.Plan,
    src_ranks: _t.Sequence[int],
    dst_ranks: _t.Sequence[int],
    *,
    gpus_per_node: int = 8,
    nvlink_gb_s: float = 400.0,
    nic_gb_s: float = 50.0,
    nics_per_node: int = 4,
    max_buffer_bytes: int = 256 << 20,
) -> _t.Dict[str, float]:
    """The time the schedule of ``plan`` would take on a cluster of
    ``gpus_per_node`` GPUs per node (process ``p`` on node ``p //
    gpus_per_node``), next to its lower bound.

    Links: each GPU's NVLink, ``nvlink_gb_s`` GB/s out and as much in; each
    node's NICs, ``nics_per_node * nic_gb_s`` GB/s out and in (400 Gb/s is
    50 GB/s). A round takes its busiest link's bytes over that link's
    bandwidth, and rounds follow one another; the lower bound is the
    busiest link's bytes of the whole transfer over its bandwidth, as if
    every link were busy all the time. Copies on one GPU are not counted.
    Returns ``{"seconds", "lower_bound_seconds", "rounds"}``.
    """
    _, rounds = schedule(plan, src_ranks, dst_ranks, max_buffer_bytes)
    nic = nics_per_node * nic_gb_s * 1e9
    nvl = nvlink_gb_s * 1e9
    total: _t.Dict[_t.Tuple[str, int], float] = _defaultdict(float)
    seconds = 0.0
    for chunks in rounds:
        load: _t.Dict[_t.Tuple[str, int], float] = _defaultdict(float)
        for s, d, c in chunks:
            if s // gpus_per_node == d // gpus_per_node:
                load[("nvl-out", s)] += c[6] / nvl
                load[("nvl-in", d)] += c[6] / nvl
            else:
                load[("nic-out", s // gpus_per_node)] += c[6] / nic
                load[("nic-in", d // gpus_per_node)] += c[6] / nic
        seconds += max(load.values(), default=0.0)
        for k, v in load.items():
            total[k] += v
    return {
        "seconds": seconds,
        "lower_bound_seconds": max(total.values(), default=0.0),
        "rounds": float(len(rounds)),
    }


def _width(dtype: str) -> int:
    return _sp._DTYPES[dtype][1]


def _index(offset, extent):
    return tuple(slice(o, o + e) for o, e in zip(offset, extent))


def _agree(group, mine: _t.Optional[str]) -> _t.List[str]:
    """Every process's fault message (or None), gathered on every process."""
    faults: _t.List[_t.Optional[str]] = [None] * _dist.get_world_size(group)
    _dist.all_gather_object(faults, mine, group=group)
    return [f for f in faults if f]


def _check(
    tensors: _t.Optional[_t.Mapping[str, _torch.Tensor]], plan: _sp.Plan, rank: _t.Optional[int], side: str
) -> _t.Optional[str]:
    """What is wrong with this process's tensors of one side of ``plan``
    (``side`` "source", every tensor required; or "destination", the given
    ones, which are received in place and so must be contiguous), or None."""
    if rank is None or tensors is None:
        return None
    strat = plan.src if side == "source" else plan.dst
    for t in plan.tensors:
        box = strat.region(t, rank)
        if box is None:
            continue
        want_shape, want_dtype = list(box[1]), _TORCH_DTYPES[strat.dtype(t)]
        have = tensors.get(t)
        if have is None:
            if side == "source":
                return f"source rank {rank}: tensor `{t}` is missing (expected {strat.dtype(t)} {want_shape})"
            continue
        if list(have.shape) != want_shape or have.dtype != want_dtype:
            return (
                f"{side} rank {rank}: tensor `{t}` is {have.dtype} {list(have.shape)}, "
                f"the plan expects {want_dtype} {want_shape}"
            )
        if side == "destination" and not have.is_contiguous():
            return f"destination rank {rank}: tensor `{t}` is not contiguous"
    return None


def _raise_any(faults: _t.List[str], help: str) -> None:
    if faults:
        raise _sp.UsageError("; ".join(faults), code="shardplan::python::usage", help=help)


#: One process's part of a round: by peer, the chunks packed into one
#: message and the chunks that go alone, sent and received.
_Part = _t.Tuple[_t.Dict[int, _t.Tuple[_t.List[_Chunk], _t.List[_Chunk]]], _t.Dict[int, _t.Tuple[_t.List[_Chunk], _t.List[_Chunk]]]]


def _part(chunks: _t.List[_t.Tuple[int, int, _Chunk]], me: int) -> _Part:
    sends: _t.Dict[int, _t.Tuple[_t.List[_Chunk], _t.List[_Chunk]]] = {}
    recvs: _t.Dict[int, _t.Tuple[_t.List[_Chunk], _t.List[_Chunk]]] = {}
    for sp_, dp, c in chunks:
        if sp_ == me:
            sends.setdefault(dp, ([], []))[1 if c[7] else 0].append(c)
        if dp == me:
            recvs.setdefault(sp_, ([], []))[1 if c[7] else 0].append(c)
    return dict(sorted(sends.items())), dict(sorted(recvs.items()))


def _workspace_bytes(part: _Part) -> int:
    """The bytes one round needs at most: every send packed (a chunk going
    alone is packed when its source box is scattered) and the packed
    receives."""
    sends, recvs = part
    return sum(c[6] for packed, alone in sends.values() for c in packed + alone) + sum(
        c[6] for packed, _ in recvs.values() for c in packed
    )


class Transfer:
    """The transfer of ``plan`` over a process group, agreed and scheduled
    once, then run as often as needed: a trainer syncing its weights into
    inference processes every step replays it.

    ``src_ranks[r]`` / ``dst_ranks[r]`` is the process (rank in ``group``)
    of the plan's source / destination mesh rank ``r``; the two may
    overlap, be disjoint or differ in count. Every process of the group
    builds it, with the same plan: building it checks that they do, and
    raises :class:`shardplan.UsageError` on every process if not.

    Between runs it keeps one round's buffers (at most twice
    ``max_buffer_bytes``), so that a replay allocates nothing but the
    destination tensors it is not given; with ``keep_buffers=False`` each
    message has its own buffer, freed after its round (what a single run
    wants: the allocator reuses buffers of a few MiB, where one large
    workspace would be fresh pages every time).
    """

    def __init__(
        self,
        plan: _sp.Plan,
        src_ranks: _t.Sequence[int],
        dst_ranks: _t.Sequence[int],
        group: _t.Any = None,
        max_buffer_bytes: int = 256 << 20,
        keep_buffers: bool = True,
    ) -> None:
        src_ranks, dst_ranks = list(src_ranks), list(dst_ranks)
        n, m = plan.src.mesh.size, plan.dst.mesh.size
        if len(src_ranks) != n or len(dst_ranks) != m:
            raise _sp.UsageError(
                f"{len(src_ranks)} source and {len(dst_ranks)} destination processes for a plan of "
                f"{n} and {m} ranks",
                code="shardplan::python::usage",
                help="give one process per mesh rank on each side",
            )
        self.plan = plan
        self._group = group
        me = _dist.get_rank(group)
        self._me_src = src_ranks.index(me) if me in src_ranks else None
        self._me_dst = dst_ranks.index(me) if me in dst_ranks else None
        digest = _hashlib.sha256(plan.to_json().encode()).hexdigest()
        digests: _t.List[_t.Optional[str]] = [None] * _dist.get_world_size(group)
        _dist.all_gather_object(digests, digest, group=group)
        fault = None if len(set(digests)) == 1 else f"process {me}: the processes hold different plans"
        _raise_any(_agree(group, fault), help="pass every process the same plan")
        local, rounds = schedule(plan, src_ranks, dst_ranks, max_buffer_bytes)
        self._local = local.get(me, [])
        self._parts = [p for p in (_part(chunks, me) for chunks in rounds) if p[0] or p[1]]
        #: The rounds of the whole transfer (this process takes part in some).
        self.rounds = len(rounds)
        self._workspace_size = max((_workspace_bytes(p) for p in self._parts), default=0) if keep_buffers else 0
        self._workspace: _t.Optional[_torch.Tensor] = None

    def __call__(
        self, local: _t.Mapping[str, _torch.Tensor], out: _t.Optional[_t.Mapping[str, _torch.Tensor]] = None
    ) -> _t.Dict[str, _torch.Tensor]:
        """Runs the transfer: ``local`` holds this process's source slices
        (empty when it holds none); ``out``, optionally, destination slices
        to receive into (an inference engine's weights; contiguous), the
        rest are allocated. Returns this process's destination slices
        (empty when it is not a destination).

        Raises :class:`shardplan.UsageError` on every process when a source
        tensor (or a given destination tensor) has the wrong shape or dtype.
        """
        plan = self.plan
        fault = _check(local, plan, self._me_src, "source") or _check(out, plan, self._me_dst, "destination")
        _raise_any(_agree(self._group, fault), help="pass each source rank its own slices, as the plan has them")
        result = self._destinations(out)
        names = plan.tensors
        for t, _s, _d, so, do, e, _b, _direct in self._local:
            result[names[t]][_index(do, e)] = local[names[t]][_index(so, e)]
        if self._workspace_size and self._workspace is None:
            self._workspace = _torch.empty(self._workspace_size, dtype=_torch.uint8)
        for part in self._parts:
            self._round(part, local, result)
        return result

    def _destinations(self, out: _t.Optional[_t.Mapping[str, _torch.Tensor]]) -> _t.Dict[str, _torch.Tensor]:
        result: _t.Dict[str, _torch.Tensor] = {}
        if self._me_dst is None:
            return result
        for t in self.plan.tensors:
            box = self.plan.dst.region(t, self._me_dst)
            if box is None:
                continue
            given = None if out is None else out.get(t)
            result[t] = given if given is not None else _torch.empty(
                list(box[1]), dtype=_TORCH_DTYPES[self.plan.dst.dtype(t)])
        return result

    def _round(self, part: _Part, local, out) -> None:
        """One round: to and from each peer, one packed message of its
        small or scattered chunks, then one message per large chunk that is
        one run of bytes in its destination, received in place."""
        names, group = self.plan.tensors, self._group
        space, at = self._workspace, 0

        def take(size: int) -> _torch.Tensor:
            nonlocal at
            if space is None:
                return _torch.empty(size, dtype=_torch.uint8)
            at += size
            return space[at - size : at]

        ops = []
        for peer, (packed, alone) in part[0].items():
            if packed:
                ops.append(_dist.P2POp(_dist.isend, _pack(packed, local, names, take), _global(peer, group), group))
            for c in alone:
                ops.append(_dist.P2POp(_dist.isend, _send_buffer(c, local, names, take), _global(peer, group), group))
        buffers = {}
        for peer, (packed, alone) in part[1].items():
            if packed:
                buffers[peer] = take(sum(c[6] for c in packed))
                ops.append(_dist.P2POp(_dist.irecv, buffers[peer], _global(peer, group), group))
            for c in alone:
                ops.append(_dist.P2POp(_dist.irecv, _raw(out[names[c[0]]][_index(c[4], c[5])]),
                                      _global(peer, group), group))
        if ops:
            for w in _dist.batch_isend_irecv(ops):
                w.wait()
        for peer, (packed, _) in part[1].items():
            at_ = 0
            for t, _s, _d, _so, do, e, b, _direct in packed:
                # Into the destination's bytes: chunks of several dtypes share
                # a buffer, so a chunk's bytes need not be aligned to its type.
                raw = _raw(out[names[t]][_index(do, e)])
                raw.copy_(buffers[peer][at_ : at_ + b].reshape(raw.shape))
                at_ += b


def redistribute(
    local: _t.Mapping[str, _torch.Tensor],
    plan: _sp.Plan,
    src_ranks: _t.Sequence[int],
    dst_ranks: _t.Sequence[int],
    group: _t.Any = None,
    max_buffer_bytes: int = 256 << 20,
    out: _t.Optional[_t.Mapping[str, _torch.Tensor]] = None,
) -> _t.Dict[str, _torch.Tensor]:
    """Carries out ``plan`` over the process group once: a
    :class:`Transfer` built and run (build the :class:`Transfer` yourself
    to replay it). ``local`` holds this process's source slices (empty when
    it holds none); the result, this process's destination slices (empty
    when it is not a destination), received into ``out``'s tensors where
    given.

    ``src_ranks[r]`` / ``dst_ranks[r]`` is the process (rank in ``group``)
    of the plan's source / destination mesh rank ``r``; the two may overlap,
    be disjoint or differ in count. Every process of the group must call it
    with the same plan.

    Raises :class:`shardplan.UsageError` on every process when the processes
    hold different plans or a source tensor has the wrong shape or dtype.
    """
    return Transfer(plan, src_ranks, dst_ranks, group, max_buffer_bytes, keep_buffers=False)(local, out)


def _raw(box: _torch.Tensor) -> _torch.Tensor:
    """A box's bytes as a view (its last dimension widened)."""
    return (box.unsqueeze(0) if box.dim() == 0 else box).view(_torch.uint8)


def _send_buffer(c: _Chunk, local, names, take) -> _torch.Tensor:
    """A chunk sent alone: its own bytes when its source box is contiguous,
    else a packed copy."""
    box = local[names[c[0]]][_index(c[3], c[5])]
    if box.is_contiguous():
        return _raw(box)
    return _pack([c], local, names, take)


def _pack(chunks: _t.List[_Chunk], local, names, take) -> _torch.Tensor:
    """One message of the chunks' bytes, end to end, each copied once,
    straight from its strided source box, into a buffer from ``take``."""
    buf = take(sum(c[6] for c in chunks))
    at = 0
    for c in chunks:
        t, so, e, b = c[0], c[3], c[5], c[6]
        box = local[names[t]][_index(so, e)]
        if box.dim() == 0:
            box = box.unsqueeze(0)
        raw = _bytes_of(box)
        buf[at : at + b].view(raw.shape).copy_(raw)
        at += b
    return buf


def _bytes_of(box: _torch.Tensor) -> _torch.Tensor:
    """The box as bytes, its last dimension widened: a view when its last
    dimension is contiguous, which a slice of a contiguous tensor's is."""
    if box.stride(-1) == 1:
        return box.view(_torch.uint8)
    return box.contiguous().view(_torch.uint8)


def _global(peer: int, group) -> int:
    return peer if group is None else _dist.get_global_rank(group, peer)


def redistribute_dtensors(
    state_dict: _t.Mapping[str, _t.Any],
    dst_mesh: _t.Any,
    placements: _t.Mapping[str, _t.Sequence[_t.Any]],
    group: _t.Any = None,
    max_buffer_bytes: int = 256 << 20,
) -> _t.Dict[str, _t.Any]:
    """DTensors moved to another mesh (``DTensor.redistribute`` refuses
    cross-mesh moves): ``placements`` maps a tensor name, or ``"*"`` for the
    rest, to the destination placements. Every process of the group calls
    it; processes of ``dst_mesh`` get DTensors on it, others nothing.
    Placements sharding one dimension over several mesh axes unevenly
    follow DTensor's nested ``torch.chunk``."""
    from torch.distributed.tensor import DTensor

    if not state_dict:
        return {}
    first = next(iter(state_dict.values()))
    src_mesh = first.device_mesh
    src_sp = _sp_mesh(src_mesh)
    dst_sp = _sp_mesh(dst_mesh)
    src_layouts, dst_layouts, local = {}, {}, {}
    for name, dt in state_dict.items():
        if dt.device_mesh != src_mesh:
            raise _sp.UsageError(
                f"tensor `{name}` is on another mesh than `{next(iter(state_dict))}`",
                code="shardplan::python::usage",
                help="redistribute the tensors of one mesh at a time",
            )
        dtype = _sp_dtype(dt.dtype)
        src_layouts[name] = (_layout(src_sp, list(dt.shape), list(dt.placements), name), dtype)
        ps = placements.get(name, placements.get("*"))
        if ps is None:
            raise _sp.UsageError(
                f"no destination placements for tensor `{name}`",
                code="shardplan::python::usage",
                help='give its placements, or "*" for every tensor not named',
            )
        dst_layouts[name] = (_layout(dst_sp, list(dt.shape), list(ps), name), dtype)
        local[name] = dt.to_local()
    src = _sp.Strategy("source", src_sp, src_layouts)
    dst = _sp.Strategy("destination", dst_sp, dst_layouts)
    plan = _sp.plan(src, dst)
    src_ranks = src_mesh.mesh.flatten().tolist()
    dst_ranks = dst_mesh.mesh.flatten().tolist()
    me = _dist.get_rank()
    if me not in src_ranks:
        local = {}
    out = redistribute(local, plan, src_ranks, dst_ranks, group=group, max_buffer_bytes=max_buffer_bytes)
    if me not in dst_ranks:
        return {}
    result = {}
    for name, dt in state_dict.items():
        ps = placements.get(name, placements.get("*"))
        result[name] = DTensor.from_local(out[name], dst_mesh, list(ps), run_check=False, shape=dt.shape,
                                          stride=dt.stride())
    return result


def _sp_mesh(mesh: _t.Any) -> _sp.DeviceMesh:
    """The mesh, its device ids the processes' ranks: the planner then knows
    which pieces stay on one process."""
    names = mesh.mesh_dim_names or tuple(f"m{i}" for i in range(mesh.ndim))
    return _sp.DeviceMesh(list(mesh.shape), list(names), device_ids=mesh.mesh.flatten().tolist())


def _sp_dtype(dtype: _torch.dtype) -> str:
    for name, d in _TORCH_DTYPES.items():
        if d == dtype:
            return name
    raise _sp.UsageError(
        f"torch dtype {dtype} has no shardplan dtype",
        code="shardplan::python::usage",
        help="use one of " + ", ".join(str(d) for d in _TORCH_DTYPES.values()),
    )


del annotations  # the __future__ import binds it; only __all__ is public
