# Types of the extension module (bindings/python/src); the package's
# documented API is re-exported from shardplan/__init__.py.

from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._errors import Diagnostic

__version__: str

Box = Tuple[List[int], List[int]]
StrPath = Union[str, PathLike[str]]

class DeviceMesh:
    """A device mesh: named axes, outermost first; rank ``r``'s coordinates
    are ``r`` in mixed radix over the axis sizes."""

    def __init__(self, shape: Sequence[int], axes: Sequence[str], device_ids: Optional[Sequence[int]] = None) -> None: ...
    @property
    def shape(self) -> List[int]:
        """Axis sizes, outermost first."""
    @property
    def axes(self) -> List[str]:
        """Axis names, outermost first."""
    @property
    def size(self) -> int:
        """Number of ranks."""
    @property
    def device_ids(self) -> Optional[List[int]]:
        """The device each rank runs on, when given."""
    def coords(self, rank: int) -> List[int]:
        """The coordinates of ``rank``, one per axis."""
    def rank_of(self, coords: Sequence[int]) -> int:
        """The rank at ``coords``."""
    def __len__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...

class Layout:
    """How one tensor is laid out over a mesh: which block each rank holds."""

    @staticmethod
    def replicated(mesh: DeviceMesh, shape: Sequence[int]) -> "Layout":
        """Every rank holds the whole tensor."""
    @staticmethod
    def from_boxes(mesh: DeviceMesh, shape: Sequence[int], boxes: Mapping[int, Tuple[Sequence[int], Sequence[int]]]) -> "Layout":
        """Given box by box: ``{rank: (offset, extent)}``; ranks with the
        same box hold replicas, ranks left out hold nothing. The boxes must
        tile the tensor (``LayoutError`` otherwise)."""
    @staticmethod
    def from_placements(mesh: DeviceMesh, shape: Sequence[int], placements: Sequence[Any]) -> "Layout":
        """From PyTorch DTensor placements, one per mesh axis: strings
        (``"Shard(0)"``, ``"Replicate()"``, ``"Partial()"``) or placement
        objects."""
    @staticmethod
    def from_partition_spec(mesh: DeviceMesh, shape: Sequence[int], spec: Union[str, Sequence[Any]]) -> "Layout":
        """From a JAX ``PartitionSpec``: text (``"P('tp', None)"``) or a
        sequence of entries (``None``, an axis name, a tuple of names)."""
    @staticmethod
    def from_mindspore(
        shape: Sequence[int],
        dev_matrix: Sequence[int],
        tensor_map: Sequence[Union[int, Sequence[int]]],
        opt_weight_shard_size: int = 0,
        opt_weight_shard_step: Optional[int] = None,
        param_split_shape: Optional[Sequence[int]] = None,
        stage: int = 0,
        stage_count: int = 1,
    ) -> "Layout":
        """From MindSpore's ``dev_matrix``, ``tensor_map`` and optimizer
        shard; without a step, the one MindSpore records."""
    @property
    def shape(self) -> List[int]:
        """The tensor's global shape."""
    @property
    def mesh(self) -> DeviceMesh:
        """The mesh."""
    @property
    def replica_count(self) -> int:
        """Ranks holding each block."""
    def region(self, rank: int) -> Optional[Box]:
        """The box ``rank`` holds, as ``(offset, extent)``, or ``None``."""
    def holders(self, index: Sequence[int]) -> List[int]:
        """The ranks holding element ``index``."""
    def shards(self) -> List[Tuple[Box, List[int]]]:
        """Every distinct block with the ranks holding it."""
    def to_placements(self) -> List[str]:
        """The layout as DTensor placements."""
    def to_partition_spec(self) -> str:
        """The layout as a JAX ``PartitionSpec``."""
    def to_mindspore(self) -> Dict[str, Any]:
        """``dev_matrix``, ``tensor_map``, ``opt_weight_shard_size``,
        ``opt_weight_shard_step``."""
    def same_placement(self, other: "Layout") -> bool:
        """True when both put the same block on every rank."""

class Strategy:
    """How every tensor of a model is laid out over one mesh."""

    def __init__(self, name: str, mesh: Optional[DeviceMesh], tensors: Dict[str, Tuple[Layout, str]]) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def mesh(self) -> DeviceMesh: ...
    @property
    def tensors(self) -> List[str]:
        """Tensor names, in order."""
    @property
    def derivation(self) -> Optional[str]:
        """For a derived strategy, why each tensor got its layout."""
    def shape(self, tensor: str) -> List[int]: ...
    def dtype(self, tensor: str) -> str: ...
    def layout(self, tensor: str) -> Layout: ...
    def region(self, tensor: str, rank: int) -> Optional[Box]:
        """The box of ``tensor`` that ``rank`` holds, or ``None``."""
    def renamed(self, name: str) -> "Strategy": ...
    def __len__(self) -> int: ...
    def __contains__(self, tensor: str) -> bool: ...

class Spec:
    """A checked spec: named meshes and strategies over one set of tensors."""

    def strategy(self, name: str) -> Strategy: ...
    @property
    def strategies(self) -> List[str]: ...
    @property
    def meshes(self) -> Dict[str, DeviceMesh]: ...
    @property
    def tensors(self) -> List[str]: ...
    @property
    def transfer(self) -> Optional[Tuple[str, str]]:
        """The transfer the spec names, ``(from, to)``."""
    @property
    def warnings(self) -> List[str]: ...
    def to_yaml(self, comment: str = "written by shardplan") -> str: ...

class Piece:
    """One copy of a plan: a box of a tensor from a source rank to a
    destination rank."""

    tensor: str
    src_rank: int
    dst_rank: int
    offset: List[int]
    extent: List[int]
    src_offset: List[int]
    dst_offset: List[int]
    bytes: int
    local: bool
    reduce: bool

class Plan:
    """A slice-transfer plan that passed the independent verifier: which
    source rank sends which box of which tensor to which destination rank.
    Made by ``plan`` or read by ``Plan.from_json``; never built unverified."""

    @property
    def summary(self) -> Dict[str, int]:
        """Totals, the keys of the JSON plan's ``summary``."""
    @property
    def ranks(self) -> Dict[str, Dict[int, Dict[str, Any]]]:
        """Per-rank traffic: ``{"send": {rank: ...}, "receive": {rank: ...}}``."""
    @property
    def src(self) -> Strategy:
        """The source strategy the plan was verified against."""
    @property
    def dst(self) -> Strategy:
        """The destination strategy the plan was verified against."""
    @property
    def source(self) -> str:
        """The source strategy's name."""
    @property
    def destination(self) -> str:
        """The destination strategy's name."""
    @property
    def replicas(self) -> str:
        """``"balance"`` or ``"min_files"``."""
    @property
    def tensors(self) -> List[str]:
        """Planned tensor names; ``to_numpy()["tensor"]`` indexes this list."""
    def verify(self) -> None:
        """Checks the plan again; raises ``PlanDefect``."""
    def pieces(
        self, *, tensor: Optional[str] = None, src_rank: Optional[int] = None, dst_rank: Optional[int] = None
    ) -> List[Piece]:
        """The pieces, optionally only those of ``tensor``, from ``src_rank``
        or to ``dst_rank``."""
    def to_numpy(self) -> np.ndarray:
        """Every piece as one row of a numpy structured array."""
    def explain(self, name: str) -> str:
        """Why tensor ``name`` moves what it moves, as text."""
    def report(self, top: int = 5) -> str:
        """The report ``shardplan plan`` prints."""
    def to_json(self, path: Optional[StrPath] = None) -> str:
        """The plan in the JSON plan format; with ``path``, also written
        there atomically (temporary name, fsync, rename)."""
    @staticmethod
    def from_json(path: StrPath, src: Strategy, dst: Strategy) -> "Plan":
        """Reads a JSON plan and verifies it moves ``src`` to ``dst``."""
    def __len__(self) -> int: ...

class Error(Exception):
    """Base class of every error shardplan raises (made by the extension,
    src/exceptions.rs)."""

    message: str
    code: Optional[str]
    help: Optional[str]
    file: Optional[str]
    line: Optional[int]
    column: Optional[int]
    tensor: Optional[str]
    rank: Optional[int]
    diagnostics: List[Diagnostic]
    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        help: Optional[str] = None,
        file: Optional[str] = None,
        line: Optional[int] = None,
        column: Optional[int] = None,
        tensor: Optional[str] = None,
        rank: Optional[int] = None,
        diagnostics: Optional[Sequence[Diagnostic]] = None,
    ) -> None: ...

class UsageError(Error, ValueError):
    """An argument of a shardplan function that it cannot use."""

class FileError(Error, OSError):
    """A file that cannot be read or written."""

class SpecError(Error):
    """A spec with errors; ``diagnostics`` lists every one."""

class LayoutError(Error):
    """A mesh, layout or notation that breaks an invariant."""

class StrategyError(Error):
    """A strategy whose tensors and layouts disagree."""

class DeriveError(Error):
    """An inference layout that cannot be derived."""

class PlanError(Error):
    """Two strategies that cannot be planned between."""

class PlanDefect(Error):
    """A plan that does not move the source to the destination exactly."""

class PlanFileError(Error):
    """A JSON plan file that cannot be read."""

class CheckpointError(Error):
    """A checkpoint that is unreadable, truncated or corrupt."""

class StrategyFileError(Error):
    """A MindSpore strategy file that cannot be read."""

class ReshardError(Error):
    """Checkpoints and strategies that disagree with each other."""

def load(path: StrPath) -> Spec:
    """Reads a YAML spec or a MindSpore strategy file."""

def read_strategy(
    files: Sequence[StrPath],
    *,
    checkpoint: Optional[StrPath] = None,
    tensors: Optional[Dict[str, Tuple[Sequence[int], str]]] = None,
    name: Optional[str] = None,
    dtype: str = "f32",
) -> Strategy:
    """Reads MindSpore strategy files as a strategy."""

def derive(
    train: Strategy,
    *,
    devices: Optional[int] = None,
    tp: Optional[int] = None,
    pp: int = 1,
    target: Optional[DeviceMesh] = None,
    name: str = "infer",
    tp_axes: Optional[Sequence[str]] = None,
    dp_axes: Optional[Sequence[str]] = None,
    pp_axis: Optional[str] = None,
    fallback: Optional[str] = None,
    layer: Optional[str] = None,
    replicate: Optional[Sequence[str]] = None,
) -> Strategy:
    """Derives an inference strategy from a training strategy."""

def plan(src: Strategy, dst: Strategy, *, replicas: str = "balance", tensors: Optional[List[str]] = None) -> Plan: ...
def _load_rank(
    checkpoint: Union[str, List[str]],
    src_strategy: Any,
    dst_strategy: Any,
    rank: int,
    replicas: str,
    any_device_count: bool,
    engine: Optional[str] = None,
    tp: int = 1,
    ep: bool = False,
    config: Optional[str] = None,
) -> Tuple[List[Tuple[str, str, List[int], np.ndarray]], List[str]]: ...
def reshard(
    src_dir: Union[str, List[str]],
    out_dir: str,
    *,
    src_strategy: Any = None,
    dst_strategy: Any = None,
    format: Optional[str] = None,
    rank: Optional[int] = None,
    replicas: str = "min_files",
    any_device_count: bool = False,
    direct_io: bool = True,
    max_shard_bytes: int = 5000000000,
    engine: Optional[str] = None,
    tp: int = 1,
    ep: bool = False,
    config: Optional[str] = None,
) -> List[Dict[str, Any]]: ...
def _parse_shard_size(text: str) -> int: ...
def _check(files: List[str]) -> List[Diagnostic]: ...
def run_cli(argv: List[str]) -> int: ...
def _dtypes() -> List[Tuple[str, int]]: ...
