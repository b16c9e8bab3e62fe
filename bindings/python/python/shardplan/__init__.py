"""shardplan: plan, verify and carry out how model weights move between
parallel layouts.

The logic is the Rust library's (``_shardplan``); this package gives it a
Python shape: numpy arrays, exceptions, paths. See docs/python.md.

>>> import shardplan as sp
>>> mesh = sp.DeviceMesh(shape=[2, 2], axes=["dp", "tp"])
>>> lay = sp.Layout.from_placements(mesh, [8, 4], ["Replicate()", "Shard(0)"])
>>> lay.region(1)
([4, 0], [4, 4])
"""

from __future__ import annotations

import os as _os
import typing as _t
import warnings as _warnings

import numpy as _np

from . import _shardplan
from ._errors import (
    CheckpointError,
    DeriveError,
    Diagnostic,
    Error,
    FileError,
    LayoutError,
    PlanDefect,
    PlanError,
    PlanFileError,
    ReshardError,
    ShardplanWarning,
    SpecError,
    StrategyError,
    StrategyFileError,
    UsageError,
)
from ._shardplan import DeviceMesh, Layout, Piece, Spec, Strategy, derive, load, read_strategy

__version__: str = _shardplan.__version__

__all__ = [
    "CheckpointError",
    "DeriveError",
    "DeviceMesh",
    "Diagnostic",
    "Error",
    "FileError",
    "Layout",
    "LayoutError",
    "Piece",
    "Plan",
    "PlanDefect",
    "PlanError",
    "PlanFileError",
    "ReshardError",
    "ShardplanWarning",
    "Spec",
    "SpecError",
    "Strategy",
    "StrategyError",
    "StrategyFileError",
    "UsageError",
    "check",
    "derive",
    "load",
    "load_distributed_checkpoint",
    "numpy_dtype",
    "dtype_name",
    "plan",
    "read_strategy",
    "reshard",
]

_PathLike = _t.Union[str, "os.PathLike[str]"]


def numpy_dtype(name: str) -> _np.dtype:
    """The numpy dtype of a shardplan dtype name (``bf16`` is
    ``ml_dtypes.bfloat16``).

    >>> numpy_dtype("f16")
    dtype('float16')
    """
    if name == "bf16":
        import ml_dtypes

        return _np.dtype(ml_dtypes.bfloat16)
    try:
        return _np.dtype(_NUMPY_NAMES[name])
    except KeyError:
        raise UsageError(
            f"`{name}` is not a shardplan dtype",
            code="shardplan::python::usage",
            help="use one of " + ", ".join(sorted([*_NUMPY_NAMES, "bf16"])),
        ) from None


def dtype_name(dtype: "np.typing.DTypeLike") -> str:
    """The shardplan dtype name of a numpy dtype, the inverse of
    :func:`numpy_dtype`.

    >>> import numpy as np
    >>> dtype_name(np.float16)
    'f16'
    """
    d = _np.dtype(dtype)
    if d.name == "bfloat16":
        return "bf16"
    for name, numpy_name in _NUMPY_NAMES.items():
        if d == _np.dtype(numpy_name):
            return name
    raise UsageError(
        f"numpy dtype `{d}` has no shardplan dtype",
        code="shardplan::python::usage",
        help="use one of " + ", ".join(sorted([*_NUMPY_NAMES.values(), "bfloat16"])),
    )


_NUMPY_NAMES = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "bool": "bool",
}


class Plan:
    """A slice-transfer plan that passed the independent verifier: which
    source rank sends which box of which tensor to which destination rank.

    Made by :func:`plan` or read by :meth:`Plan.from_json`; never built
    unverified.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: _t.Any) -> None:
        self._inner = inner

    @property
    def summary(self) -> _t.Dict[str, int]:
        """Totals, the keys of the JSON plan's ``summary``: ``total_bytes``,
        ``lower_bound_bytes``, ``local_bytes``, ``max_send_bytes``,
        ``max_send_lower_bound_bytes``, ``max_recv_bytes``, ``messages``,
        ``pieces``."""
        return self._inner.summary

    @property
    def ranks(self) -> _t.Dict[str, _t.Dict[int, _t.Dict[str, _t.Any]]]:
        """Per-rank traffic: ``{"send": {rank: {bytes, messages}},
        "receive": {rank: {bytes, messages, local_bytes, files}}}``."""
        return self._inner.ranks

    @property
    def src(self) -> Strategy:
        """The source strategy the plan was verified against."""
        return self._inner.src

    @property
    def dst(self) -> Strategy:
        """The destination strategy the plan was verified against."""
        return self._inner.dst

    @property
    def source(self) -> str:
        """The source strategy's name."""
        return self._inner.source

    @property
    def destination(self) -> str:
        """The destination strategy's name."""
        return self._inner.destination

    @property
    def replicas(self) -> str:
        """How replicas were chosen: ``"balance"`` or ``"min_files"``."""
        return self._inner.replicas

    @property
    def tensors(self) -> _t.List[str]:
        """Planned tensor names; ``to_numpy()["tensor"]`` indexes this list."""
        return self._inner.tensors

    def verify(self) -> None:
        """Checks the plan again with the independent verifier; raises
        :class:`PlanDefect` naming the tensor, rank and box at fault."""
        self._inner.verify()

    def pieces(
        self,
        *,
        tensor: _t.Optional[str] = None,
        src_rank: _t.Optional[int] = None,
        dst_rank: _t.Optional[int] = None,
    ) -> _t.List[Piece]:
        """The pieces, optionally only those of ``tensor``, from
        ``src_rank`` or to ``dst_rank``."""
        return self._inner.pieces(tensor=tensor, src_rank=src_rank, dst_rank=dst_rank)

    def to_numpy(self) -> _np.ndarray:
        """Every piece as one row of a numpy structured array.

        Fields: ``tensor`` (index into :attr:`tensors`), ``src_rank``,
        ``dst_rank``, ``bytes``, ``local``, ``reduce``, ``ndim``, and per
        dimension (arrays of the largest tensor rank, padded with 0 for
        offsets and 1 for extents): ``offset`` (in the global tensor),
        ``src_offset`` (in the source rank's local buffer), ``dst_offset``
        (in the destination rank's local buffer), ``extent``.
        """
        matrix, ndim = self._inner._piece_matrix()
        dims = (ndim,) if ndim else (0,)
        dtype = _np.dtype(
            [
                ("tensor", _np.uint32),
                ("src_rank", _np.uint64),
                ("dst_rank", _np.uint64),
                ("bytes", _np.uint64),
                ("local", _np.bool_),
                ("reduce", _np.bool_),
                ("ndim", _np.uint8),
                ("offset", _np.uint64, dims),
                ("src_offset", _np.uint64, dims),
                ("dst_offset", _np.uint64, dims),
                ("extent", _np.uint64, dims),
            ]
        )
        out = _np.empty(matrix.shape[0], dtype=dtype)
        for i, name in enumerate(("tensor", "src_rank", "dst_rank", "bytes", "local", "reduce", "ndim")):
            out[name] = matrix[:, i]
        for k, name in enumerate(("offset", "src_offset", "dst_offset", "extent")):
            start = 7 + k * ndim
            out[name] = matrix[:, start : start + ndim].reshape((-1, *dims))
        return out

    def explain(self, tensor: str) -> str:
        """Why ``tensor`` moves what it moves: its layouts, pieces and
        bounds, as text."""
        return self._inner.explain(tensor)

    def report(self, top: int = 5) -> str:
        """The report ``shardplan plan`` prints."""
        return self._inner.report(top)

    def to_json(self, path: _t.Optional[_PathLike] = None) -> str:
        """The plan in the JSON plan format (docs/plan-format.md). With
        ``path``, also written there (to a temporary name, fsynced,
        renamed)."""
        text = self._inner._json() + "\n"
        if path is not None:
            _write_atomic(_os.fspath(path), text.encode())
        return text

    @staticmethod
    def from_json(path: _PathLike, src: Strategy, dst: Strategy) -> "Plan":
        """Reads a JSON plan and verifies it moves ``src`` to ``dst``:
        :class:`PlanFileError` for a malformed file, :class:`PlanDefect`
        for a wrong plan."""
        name = _os.fspath(path)
        try:
            with open(name, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise FileError(
                f"cannot read {name}: {e.strerror}",
                code="shardplan::python::read",
                help="check the path",
                file=name,
            ) from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PlanFileError(
                f"{name}: not UTF-8 at byte {e.start}",
                code="shardplan::formats::plan_json",
                help="plan files are JSON, written by `shardplan plan --format json`",
                file=name,
            ) from None
        return Plan(_shardplan.Plan._from_json_text(name, text, src, dst))

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return repr(self._inner)


def plan(
    src: Strategy,
    dst: Strategy,
    *,
    replicas: str = "balance",
    tensors: _t.Optional[_t.Sequence[str]] = None,
) -> Plan:
    """Plans moving every tensor (or those in ``tensors``) from ``src`` to
    ``dst``, and verifies the plan. ``replicas="balance"`` spreads the
    sending over replicas so the largest per-rank send meets its bound;
    ``"min_files"`` reads as few source files per destination as possible.
    """
    names = None if tensors is None else list(tensors)
    return Plan(_shardplan.plan(src, dst, replicas=replicas, tensors=names))


def _path_or_paths(value: _t.Any) -> _t.Union[str, _t.List[str]]:
    """One path as a string, several as a list of strings."""
    if isinstance(value, (str, _os.PathLike)):
        return _os.fspath(value)
    return [_os.fspath(v) for v in value]


def _side(value: _t.Any) -> _t.Any:
    """A strategy argument as the extension takes it."""
    if value is None or isinstance(value, Strategy):
        return value
    return _path_or_paths(value)


def load_distributed_checkpoint(
    checkpoint: _t.Union[_PathLike, _t.Sequence[_PathLike]],
    train_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    predict_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    rank: int = 0,
    *,
    replicas: str = "min_files",
    any_device_count: bool = False,
) -> _t.Dict[str, _np.ndarray]:
    """Reads what rank ``rank`` holds under ``predict_strategy`` from a
    distributed checkpoint, as numpy arrays by tensor name.

    ``checkpoint`` is a folder of ``rank_<r>/`` folders or a list of files
    (file ``r`` is rank ``r``'s), or a PyTorch DCP folder, a Hugging Face
    model folder or a safetensors file, whose index is their layout (give
    no ``train_strategy`` then). ``train_strategy`` and
    ``predict_strategy`` are MindSpore strategy files (a list for per-stage
    files), :class:`Strategy` values, or ``None``: a source of one rank
    holding whole tensors, a destination of one device (whole tensors).
    Only the bytes the rank needs are read, with positional reads.
    Parameters missing from a strategy follow MindSpore's rules, each with
    a :class:`ShardplanWarning`.
    """
    raw, notes = _shardplan._load_rank(
        _path_or_paths(checkpoint),
        _side(train_strategy),
        _side(predict_strategy),
        rank,
        replicas,
        any_device_count,
    )
    for note in notes:
        _warnings.warn(note, ShardplanWarning, stacklevel=2)
    out: _t.Dict[str, _np.ndarray] = {}
    for name, dtype, shape, data in raw:
        out[name] = data.view(numpy_dtype(dtype)).reshape(shape)
    return out


def reshard(
    src_dir: _t.Union[_PathLike, _t.Sequence[_PathLike]],
    out_dir: _PathLike,
    *,
    src_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    dst_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    format: _t.Optional[str] = None,
    rank: _t.Optional[int] = None,
    replicas: str = "min_files",
    any_device_count: bool = False,
    direct_io: bool = True,
    max_shard_size: _t.Union[int, str] = "5GB",
) -> _t.List[_t.Dict[str, _t.Any]]:
    """Reshards a checkpoint into ``out_dir``, as ``shardplan reshard``
    does: outputs temp-named, fsynced and renamed, resumable, sources never
    modified. The source is a MindSpore folder of ``rank_<r>/`` folders (or
    a list of per-rank files), a PyTorch DCP folder, a Hugging Face model
    folder or a safetensors file; DCP and Hugging Face sources take no
    ``src_strategy``. ``format`` is ``"ckpt"`` or ``"safetensors"``
    (``rank_<k>/checkpoint_<k>.<ext>``), ``"hf"`` (a Hugging Face model
    folder, sharded at ``max_shard_size``: bytes, or text such as
    ``"5GB"``), ``"dcp"`` (``.metadata`` and ``__<k>_0.distcp``), or
    ``None`` (the source's). Without ``dst_strategy`` the output is one rank
    of whole tensors. Returns one dict per rank: ``rank``, ``path`` (its
    main file), ``files``, ``bytes``, ``resumed``.
    """
    if isinstance(max_shard_size, str):
        max_shard_size = _shardplan._parse_shard_size(max_shard_size)
    return _shardplan.reshard(
        _path_or_paths(src_dir),
        _os.fspath(out_dir),
        src_strategy=_side(src_strategy),
        dst_strategy=_side(dst_strategy),
        format=format,
        rank=rank,
        replicas=replicas,
        any_device_count=any_device_count,
        direct_io=direct_io,
        max_shard_bytes=max_shard_size,
    )


def check(files: _t.Union[_PathLike, _t.Iterable[_PathLike]]) -> _t.List[Diagnostic]:
    """Checks spec files, as ``shardplan check`` does, and returns every
    diagnostic (errors and warnings) in file order; ``[]`` for valid specs.
    An unreadable file raises :class:`FileError`."""
    paths = _path_or_paths(files)
    return _shardplan._check([paths] if isinstance(paths, str) else paths)


def _write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to a temporary name beside ``path``, fsyncs it and
    renames it over ``path``."""
    tmp = f"{path}.tmp-{_os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            _os.fsync(f.fileno())
        _os.replace(tmp, path)
    except OSError as e:
        try:
            _os.unlink(tmp)
        except OSError:
            pass
        raise FileError(
            f"cannot write {path}: {e.strerror}",
            code="shardplan::python::write",
            help="check that the folder exists and is writable",
            file=path,
        ) from e


del annotations  # the __future__ import binds it; only __all__ is public
