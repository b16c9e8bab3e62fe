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
from ._shardplan import DeviceMesh, Layout, Piece, Plan, Spec, Strategy, derive, load, read_strategy

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


def _long_name(name: str, width: int) -> str:
    """numpy's and torch's spelling of a shardplan dtype: ``float32``,
    ``bfloat16``, ``int8``, ``uint64``, ``bool``."""
    if name == "bool":
        return name
    kind = {"f": "float", "bf": "bfloat", "i": "int", "u": "uint"}[name.rstrip("0123456789")]
    return f"{kind}{8 * width}"


#: Every shardplan dtype name with its numpy/torch name and width in bytes,
#: from the Rust library's ``DType`` (the one table; ``shardplan.torch``
#: maps from it too).
_DTYPES: _t.Dict[str, _t.Tuple[str, int]] = {
    name: (_long_name(name, width), width) for name, width in _shardplan._dtypes()
}


def numpy_dtype(name: str) -> _np.dtype:
    """The numpy dtype of a shardplan dtype name (``bf16`` is
    ``ml_dtypes.bfloat16``).

    >>> numpy_dtype("f16")
    dtype('float16')
    """
    try:
        long_name = _DTYPES[name][0]
    except KeyError:
        raise UsageError(
            f"`{name}` is not a shardplan dtype",
            code="shardplan::python::usage",
            help="use one of " + ", ".join(sorted(_DTYPES)),
        ) from None
    if long_name == "bfloat16":
        import ml_dtypes

        return _np.dtype(ml_dtypes.bfloat16)
    return _np.dtype(long_name)


def dtype_name(dtype: "_np.typing.DTypeLike") -> str:
    """The shardplan dtype name of a numpy dtype, the inverse of
    :func:`numpy_dtype`.

    >>> import numpy as np
    >>> dtype_name(np.float16)
    'f16'
    """
    d = _np.dtype(dtype)
    for name, (long_name, _) in _DTYPES.items():
        # numpy has no bfloat16 of its own (ml_dtypes'): matched by name.
        same = d.name == long_name if long_name == "bfloat16" else d == _np.dtype(long_name)
        if same:
            return name
    raise UsageError(
        f"numpy dtype `{d}` has no shardplan dtype",
        code="shardplan::python::usage",
        help="use one of " + ", ".join(sorted(long for long, _ in _DTYPES.values())),
    )


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
    return _shardplan.plan(src, dst, replicas=replicas, tensors=names)


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


def _alias(value: _t.Any, name: str, alias_value: _t.Any, alias: str) -> _t.Any:
    """``value``, or ``alias_value`` given under the alias; both given is a
    :class:`UsageError`."""
    if alias_value is None:
        return value
    if value is not None:
        raise UsageError(
            f"both `{name}` and its alias `{alias}` were given",
            code="shardplan::python::usage",
            help=f"give only `{name}` (`{alias}` is MindSpore's name for it)",
        )
    return alias_value


def load_distributed_checkpoint(
    checkpoint: _t.Union[_PathLike, _t.Sequence[_PathLike]],
    src_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    dst_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    rank: int = 0,
    *,
    replicas: str = "min_files",
    any_device_count: bool = False,
    train_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    predict_strategy: _t.Union[None, _PathLike, _t.Sequence[_PathLike], Strategy] = None,
    engine: _t.Optional[str] = None,
    tp: int = 1,
    ep: bool = False,
    config: _t.Optional[_PathLike] = None,
) -> _t.Dict[str, _np.ndarray]:
    """Reads what rank ``rank`` holds under ``dst_strategy`` from a
    distributed checkpoint, as numpy arrays by tensor name.

    ``checkpoint`` is a folder of ``rank_<r>/`` folders or a list of files
    (file ``r`` is rank ``r``'s), or a PyTorch DCP folder, a Hugging Face
    model folder or a safetensors file, whose index is their layout (give
    no ``src_strategy`` then). ``src_strategy`` and ``dst_strategy`` (as
    :func:`reshard` names them) are MindSpore strategy files (a list for
    per-stage files), :class:`Strategy` values, or ``None``: a source of
    one rank holding whole tensors, a destination of one device (whole
    tensors). ``train_strategy`` and ``predict_strategy`` are their aliases,
    MindSpore's names (``load_distributed_checkpoint(network,
    checkpoint_filenames, predict_strategy, train_strategy_filename)``);
    giving a name and its alias raises :class:`UsageError`. Only the bytes
    the rank needs are read, with positional reads. Parameters missing
    from a strategy follow MindSpore's rules, each with a
    :class:`ShardplanWarning`.

    With ``engine="vllm"`` the destination is the engine's rank ``rank``
    at tensor parallel degree ``tp`` (``ep``: experts spread whole over the
    ranks, vLLM's ``enable_expert_parallel``), built from ``config`` (by
    default the ``config.json`` beside the source), as ``shardplan reshard
    --engine`` builds it: the arrays are the engine's parameters, by its
    names and shapes (fused, padded). ``engine`` refuses a
    ``dst_strategy``.
    """
    src_strategy = _alias(src_strategy, "src_strategy", train_strategy, "train_strategy")
    dst_strategy = _alias(dst_strategy, "dst_strategy", predict_strategy, "predict_strategy")
    raw, notes = _shardplan._load_rank(
        _path_or_paths(checkpoint),
        _side(src_strategy),
        _side(dst_strategy),
        rank,
        replicas,
        any_device_count,
        engine=engine,
        tp=tp,
        ep=ep,
        config=None if config is None else _os.fspath(config),
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
    engine: _t.Optional[str] = None,
    tp: int = 1,
    ep: bool = False,
    config: _t.Optional[_PathLike] = None,
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

    With ``engine="vllm"`` the output is an inference engine's own ranks,
    as ``shardplan reshard --engine vllm`` writes them:
    ``rank_<r>/model.safetensors`` holding vLLM's parameters at tensor
    parallel degree ``tp`` (``ep``: experts spread whole over the ranks),
    built from ``config`` (by default the ``config.json`` beside the
    source). ``engine`` refuses ``dst_strategy`` and ``format``.
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
        engine=engine,
        tp=tp,
        ep=ep,
        config=None if config is None else _os.fspath(config),
    )


def check(files: _t.Union[_PathLike, _t.Iterable[_PathLike]]) -> _t.List[Diagnostic]:
    """Checks spec files, as ``shardplan check`` does, and returns every
    diagnostic (errors and warnings) in file order; ``[]`` for valid specs.
    An unreadable file raises :class:`FileError`."""
    paths = _path_or_paths(files)
    return _shardplan._check([paths] if isinstance(paths, str) else paths)


del annotations  # the __future__ import binds it; only __all__ is public
