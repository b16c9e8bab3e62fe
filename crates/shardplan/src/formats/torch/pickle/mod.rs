//! A restricted pickle machine: it decodes the opcodes of pickle protocols
//! 2 to 5 that PyTorch writes (`.metadata` of DCP, `data.pkl` of
//! `torch.save`) into a plain [`Value`] tree, and runs nothing.
//!
//! A pickle is a program: `GLOBAL`/`STACK_GLOBAL` import any Python name
//! and `REDUCE` calls it, which is how a hostile file runs `os.system`.
//! Here a global is only a name: it must be on the caller's allow-list, a
//! call (`REDUCE`, `NEWOBJ`) becomes an [`Value::Object`] record, and only
//! allow-listed callables may be "called" at all. Every size the input
//! controls is bounded by [`PickleLimits`], so hostile input ends in a
//! [`PickleError`] quickly and with bounded memory.
//!
//! # Design
//!
//! The machine keeps its objects in an arena and the stack and memo hold
//! indices, as Python holds references: a container fetched from the memo
//! and then filled is the same container. The tree is built once, at
//! `STOP`; its size and depth are checked there, which also catches memo
//! cycles and shared subtrees that would expand without bound.

mod error;
mod machine;
pub(crate) mod write;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{PickleError, PickleFault};
pub use machine::unpickle;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer (pickles of up to 16 bytes).
    Int(i128),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict (also `collections.OrderedDict()`), in pickle order.
    Dict(Vec<(Value, Value)>),
    /// A global named but not called, such as `torch.float32`.
    Global(Global),
    /// What `REDUCE` or `NEWOBJ` of an allowed callable would have built:
    /// the callable, its arguments and the `BUILD` state, if any.
    Object {
        /// The callable or class.
        class: Global,
        /// Its positional arguments.
        args: Vec<Value>,
        /// The state `BUILD` gave it.
        state: Option<Box<Value>>,
    },
    /// A persistent id (`BINPERSID`, `PERSID`): torch.save's storage
    /// references.
    PersistentId(Box<Value>),
}

impl Value {
    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int`.
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items, if this is a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The value under the string key `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// True when this is the global `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global(g) if g.is(module, name))
    }
}

/// A Python global, by module and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    /// Module, such as `torch.distributed.checkpoint.metadata`.
    pub module: String,
    /// Name in the module, such as `Metadata`.
    pub name: String,
}

impl Global {
    /// True when this is `module.name`.
    pub fn is(&self, module: &str, name: &str) -> bool {
        self.module == module && self.name == name
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// A global the machine accepts, and whether `REDUCE`/`NEWOBJ` may apply
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedGlobal {
    /// Module.
    pub module: &'static str,
    /// Name.
    pub name: &'static str,
    /// Whether it may be called (a class or function), or only named (a
    /// dtype, a storage class).
    pub callable: bool,
}

const fn call(module: &'static str, name: &'static str) -> AllowedGlobal {
    AllowedGlobal {
        module,
        name,
        callable: true,
    }
}

const fn name(module: &'static str, name: &'static str) -> AllowedGlobal {
    AllowedGlobal {
        module,
        name,
        callable: false,
    }
}

const DCP_META: &str = "torch.distributed.checkpoint.metadata";

/// The globals of a DCP `.metadata`, as PyTorch 2.x writes it: the
/// metadata dataclasses, `_StorageInfo`, `torch.Size`, dtypes, the layout
/// and memory-format encoders, and `pathlib` paths (the checkpoint id).
pub const DCP_METADATA_GLOBALS: &[AllowedGlobal] = &[
    call(DCP_META, "Metadata"),
    call(DCP_META, "TensorStorageMetadata"),
    call(DCP_META, "BytesStorageMetadata"),
    call(DCP_META, "ChunkStorageMetadata"),
    call(DCP_META, "TensorProperties"),
    call(DCP_META, "MetadataIndex"),
    call(DCP_META, "StorageMeta"),
    call(DCP_META, "_MEM_FORMAT_ENCODING"),
    call("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    call("torch", "Size"),
    call("torch.serialization", "_get_layout"),
    call("collections", "OrderedDict"),
    call("pathlib", "PosixPath"),
    call("pathlib", "WindowsPath"),
    call("pathlib", "PurePosixPath"),
    name("torch", "float64"),
    name("torch", "float32"),
    name("torch", "float16"),
    name("torch", "bfloat16"),
    name("torch", "int64"),
    name("torch", "int32"),
    name("torch", "int16"),
    name("torch", "int8"),
    name("torch", "uint64"),
    name("torch", "uint32"),
    name("torch", "uint16"),
    name("torch", "uint8"),
    name("torch", "bool"),
    // Named so that the reader can say "unsupported dtype" rather than
    // "unknown global".
    name("torch", "complex64"),
    name("torch", "complex128"),
    name("torch", "float8_e4m3fn"),
    name("torch", "float8_e5m2"),
];

/// The globals of a `torch.save` archive's `data.pkl` holding one tensor:
/// `_rebuild_tensor_v2`, the typed storage classes, `OrderedDict` (the
/// empty backward hooks).
pub const TORCH_SAVE_GLOBALS: &[AllowedGlobal] = &[
    call("torch._utils", "_rebuild_tensor_v2"),
    call("torch._utils", "_rebuild_tensor_v3"),
    call("collections", "OrderedDict"),
    name("torch.storage", "UntypedStorage"),
    name("torch", "uint16"),
    name("torch", "uint32"),
    name("torch", "uint64"),
    name("torch", "DoubleStorage"),
    name("torch", "FloatStorage"),
    name("torch", "HalfStorage"),
    name("torch", "BFloat16Storage"),
    name("torch", "LongStorage"),
    name("torch", "IntStorage"),
    name("torch", "ShortStorage"),
    name("torch", "CharStorage"),
    name("torch", "ByteStorage"),
    name("torch", "BoolStorage"),
    name("torch", "UInt16Storage"),
    name("torch", "UInt32Storage"),
    name("torch", "UInt64Storage"),
];

/// Bounds on everything the input controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickleLimits {
    /// Largest input, in bytes.
    pub max_input: usize,
    /// Most values on the stack at once. Pickle writers flush containers
    /// in batches of 1000 items, so real files stay in the low thousands.
    pub max_stack: usize,
    /// Deepest nesting of open marks and of the result. The result is
    /// built recursively, so keep this at a few hundred at most.
    pub max_depth: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Longest string, bytes or global name, in bytes.
    pub max_len: usize,
    /// Most values: objects made while running, and nodes of the result.
    pub max_values: usize,
}

impl PickleLimits {
    /// Ample for DCP metadata of models with a million tensors, small
    /// enough that a hostile file is refused in milliseconds.
    pub const STANDARD: PickleLimits = PickleLimits {
        max_input: 1 << 30,
        max_stack: 1 << 16,
        max_depth: 100,
        max_memo: 1 << 24,
        max_len: 1 << 20,
        max_values: 1 << 25,
    };
}

#[cfg(test)]
mod tests;
