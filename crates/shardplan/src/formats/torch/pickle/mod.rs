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

pub(crate) mod write;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

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

/// A pickle the machine refuses: the file, the byte offset of the opcode,
/// and the fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: pickle opcode at byte {offset}: {kind}", file.display())]
pub struct PickleError {
    /// The file (or the place in a file) the pickle came from.
    pub file: PathBuf,
    /// Byte offset of the opcode in the pickle.
    pub offset: u64,
    /// What is wrong.
    pub kind: PickleFault,
}

impl miette::Diagnostic for PickleError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.kind.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.kind.help()
    }
}

const REWRITE: &str = "the file is not a pickle PyTorch wrote, or it was truncated or altered; write it again with torch.distributed.checkpoint";

/// The faults of [`PickleError`], one per way a pickle is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum PickleFault {
    /// The input ends inside an opcode or before `STOP`.
    #[error("the input ends early: {needed} more bytes needed")]
    #[diagnostic(code(shardplan::formats::pickle::truncated), help("{REWRITE}"))]
    Truncated {
        /// Bytes missing.
        needed: u64,
    },
    /// A byte that is no pickle opcode.
    #[error("unknown opcode 0x{opcode:02x}")]
    #[diagnostic(code(shardplan::formats::pickle::unknown_opcode), help("{REWRITE}"))]
    UnknownOpcode {
        /// The byte.
        opcode: u8,
    },
    /// A pickle opcode the machine does not decode (protocol 0/1 text
    /// forms, extension registry, sets, out-of-band buffers).
    #[error("opcode {name} (0x{opcode:02x}) is not supported")]
    #[diagnostic(
        code(shardplan::formats::pickle::unsupported_opcode),
        help("PyTorch does not write this opcode in checkpoints; {REWRITE}")
    )]
    UnsupportedOpcode {
        /// The byte.
        opcode: u8,
        /// Its pickletools name.
        name: &'static str,
    },
    /// A `PROTO` outside 2..=5.
    #[error("pickle protocol {version} is not supported (2 to 5 are)")]
    #[diagnostic(code(shardplan::formats::pickle::protocol), help("{REWRITE}"))]
    Protocol {
        /// The protocol number.
        version: u8,
    },
    /// A global not on the allow-list: the pickle would import it.
    #[error("global {global} is not allowed: the pickle would import it")]
    #[diagnostic(
        code(shardplan::formats::pickle::unknown_global),
        help(
            "nothing was run; only the names PyTorch checkpoints use are accepted (docs/formats.md); do not load this file with pickle or torch.load"
        )
    )]
    UnknownGlobal {
        /// `module.name`.
        global: String,
    },
    /// `REDUCE` or `NEWOBJ` of something that may not be called.
    #[error("{opcode} would call {callable}, which is not an allowed callable")]
    #[diagnostic(
        code(shardplan::formats::pickle::not_callable),
        help(
            "nothing was run; only the classes and functions PyTorch checkpoints use may be applied; do not load this file with pickle or torch.load"
        )
    )]
    NotCallable {
        /// The opcode.
        opcode: &'static str,
        /// What it would call.
        callable: String,
    },
    /// An opcode that needs more values than the stack holds.
    #[error("{opcode} pops from an empty stack")]
    #[diagnostic(code(shardplan::formats::pickle::stack_underflow), help("{REWRITE}"))]
    StackUnderflow {
        /// The opcode.
        opcode: &'static str,
    },
    /// An opcode that needs a `MARK` where there is none.
    #[error("{opcode} without a MARK")]
    #[diagnostic(code(shardplan::formats::pickle::no_mark), help("{REWRITE}"))]
    NoMark {
        /// The opcode.
        opcode: &'static str,
    },
    /// A memo fetch of an index never stored.
    #[error("memo index {index} was never stored")]
    #[diagnostic(code(shardplan::formats::pickle::memo_missing), help("{REWRITE}"))]
    MemoMissing {
        /// The index.
        index: u64,
    },
    /// An opcode applied to a value of the wrong kind.
    #[error("{opcode} needs {expected}")]
    #[diagnostic(code(shardplan::formats::pickle::wrong_type), help("{REWRITE}"))]
    WrongType {
        /// The opcode.
        opcode: &'static str,
        /// What it needs.
        expected: &'static str,
    },
    /// Text that is not UTF-8.
    #[error("{opcode} holds text that is not UTF-8")]
    #[diagnostic(code(shardplan::formats::pickle::bad_text), help("{REWRITE}"))]
    BadUtf8 {
        /// The opcode.
        opcode: &'static str,
    },
    /// An integer wider than 16 bytes.
    #[error("an integer of {bytes} bytes is too wide (16 at most)")]
    #[diagnostic(code(shardplan::formats::pickle::int_too_large), help("{REWRITE}"))]
    IntTooLarge {
        /// Its width.
        bytes: u64,
    },
    /// The input is larger than [`PickleLimits::max_input`].
    #[error("the pickle is {len} bytes, more than the limit of {limit}")]
    #[diagnostic(
        code(shardplan::formats::pickle::input_too_large),
        help("a checkpoint index this large is not plausible; check the file")
    )]
    InputTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A length field beyond [`PickleLimits::max_len`].
    #[error("{opcode} declares {len} bytes, more than the limit of {limit}")]
    #[diagnostic(code(shardplan::formats::pickle::length_too_large), help("{REWRITE}"))]
    LengthTooLarge {
        /// The opcode.
        opcode: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The stack holds more than [`PickleLimits::max_stack`] values, or
    /// the open marks or the result nest deeper than
    /// [`PickleLimits::max_depth`].
    #[error("{what} is deeper than the limit of {limit}")]
    #[diagnostic(code(shardplan::formats::pickle::too_deep), help("{REWRITE}"))]
    TooDeep {
        /// The stack, the marks, or the result.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// More values than [`PickleLimits::max_values`].
    #[error("more than {limit} values")]
    #[diagnostic(code(shardplan::formats::pickle::too_many_values), help("{REWRITE}"))]
    TooManyValues {
        /// The limit.
        limit: u64,
    },
    /// More memo entries than [`PickleLimits::max_memo`].
    #[error("more than {limit} memo entries")]
    #[diagnostic(code(shardplan::formats::pickle::memo_full), help("{REWRITE}"))]
    MemoFull {
        /// The limit.
        limit: u64,
    },
    /// A value that contains itself (through the memo).
    #[error("a value contains itself")]
    #[diagnostic(
        code(shardplan::formats::pickle::cycle),
        help("checkpoint metadata is never cyclic; {REWRITE}")
    )]
    Cycle,
    /// `STOP` with other than exactly one value on the stack, or open
    /// marks.
    #[error("STOP leaves {values} values and {marks} marks (one value, no marks expected)")]
    #[diagnostic(code(shardplan::formats::pickle::unbalanced), help("{REWRITE}"))]
    Unbalanced {
        /// Values on the stack.
        values: u64,
        /// Open marks.
        marks: u64,
    },
}

/// Decodes `bytes`, a pickle read from `file`, into a value, accepting
/// only the globals in `allowed`.
///
/// # Errors
///
/// [`PickleError`] naming `file` and the opcode's byte offset, for: input
/// longer than `limits.max_input`; a truncated pickle; an unknown or
/// unsupported opcode; a protocol outside 2..=5; a global not in
/// `allowed`; `REDUCE`/`NEWOBJ` of anything but an allowed callable; a
/// stack underflow, missing mark, missing memo entry, or an opcode applied
/// to the wrong kind of value; text that is not UTF-8; an integer wider
/// than 16 bytes; a length, depth, memo or value count beyond `limits`; a
/// cyclic value; and a `STOP` leaving other than one value.
pub fn unpickle(
    file: &Path,
    bytes: &[u8],
    allowed: &[AllowedGlobal],
    limits: &PickleLimits,
) -> Result<Value, PickleError> {
    let mut m = Machine {
        bytes,
        pos: 0,
        op_at: 0,
        limits,
        allowed,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run().map_err(|kind| PickleError {
        file: file.to_path_buf(),
        offset: m.op_at as u64,
        kind,
    })
}

type Id = usize;

/// An object of the machine; containers hold arena indices.
enum Node {
    Leaf(Value),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Object {
        class: Global,
        args: Vec<Id>,
        state: Option<Id>,
    },
    Pid(Id),
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for errors.
    op_at: usize,
    limits: &'a PickleLimits,
    allowed: &'a [AllowedGlobal],
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

type Step<T> = Result<T, PickleFault>;

impl<'a> Machine<'a> {
    fn run(&mut self) -> Step<Value> {
        if self.bytes.len() > self.limits.max_input {
            return Err(PickleFault::InputTooLarge {
                len: self.bytes.len() as u64,
                limit: self.limits.max_input as u64,
            });
        }
        loop {
            self.op_at = self.pos;
            let op = self.take(1)?.first().copied().unwrap_or_default();
            if op == b'.' {
                return self.stop();
            }
            self.step(op)?;
        }
    }

    fn stop(&mut self) -> Step<Value> {
        let (values, marks) = (self.stack.len(), self.marks.len());
        let root = match self.stack.as_slice() {
            [root] if marks == 0 => *root,
            _ => {
                return Err(PickleFault::Unbalanced {
                    values: values as u64,
                    marks: marks as u64,
                });
            }
        };
        let mut on_path = vec![false; self.nodes.len()];
        let mut count = 0;
        self.tree(root, 0, &mut count, &mut on_path)
    }

    /// Runs one opcode other than `STOP`.
    fn step(&mut self, op: u8) -> Step<()> {
        match op {
            0x80 => self.proto(),
            0x95 => self.take_len(8, "FRAME").map(|_| ()),
            b'(' => self.mark(),
            b'0' => self.pop("POP").map(|_| ()),
            b'1' => self.pop_mark("POP_MARK").map(|_| ()),
            b'2' => self.dup(),
            b'N' => self.leaf(Value::None),
            0x88 => self.leaf(Value::Bool(true)),
            0x89 => self.leaf(Value::Bool(false)),
            b'K' => self.int_le(1, false),
            b'M' => self.int_le(2, false),
            b'J' => self.int_le(4, true),
            0x8a => self.long(1),
            0x8b => self.long(4),
            b'G' => self.float(),
            0x8c => self.text(1, "SHORT_BINUNICODE"),
            b'X' => self.text(4, "BINUNICODE"),
            0x8d => self.text(8, "BINUNICODE8"),
            b'C' => self.binary(1, "SHORT_BINBYTES"),
            b'B' => self.binary(4, "BINBYTES"),
            0x8e => self.binary(8, "BINBYTES8"),
            b')' => self.push(Node::Tuple(Vec::new())),
            0x85 => self.tuple_n(1, "TUPLE1"),
            0x86 => self.tuple_n(2, "TUPLE2"),
            0x87 => self.tuple_n(3, "TUPLE3"),
            b't' => {
                let items = self.pop_mark("TUPLE")?;
                self.push(Node::Tuple(items))
            }
            b']' => self.push(Node::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark("LIST")?;
                self.push(Node::List(items))
            }
            b'a' => self.append(false),
            b'e' => self.append(true),
            b'}' => self.push(Node::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark("DICT")?;
                let pairs = pairs(items, "DICT")?;
                self.push(Node::Dict(pairs))
            }
            b's' => self.setitems(false),
            b'u' => self.setitems(true),
            b'c' => self.global(),
            0x93 => self.stack_global(),
            b'R' => self.apply("REDUCE"),
            0x81 => self.apply("NEWOBJ"),
            b'b' => self.build(),
            b'Q' => {
                let pid = self.pop("BINPERSID")?;
                self.push(Node::Pid(pid))
            }
            b'P' => {
                let line = self.line("PERSID")?;
                let pid = self.alloc(Node::Leaf(Value::Str(line)))?;
                self.push(Node::Pid(pid))
            }
            0x94 => {
                let index = self.memo.len() as u64;
                self.put(index, "MEMOIZE")
            }
            b'q' => {
                let index = self.uint(1)?;
                self.put(index, "BINPUT")
            }
            b'r' => {
                let index = self.uint(4)?;
                self.put(index, "LONG_BINPUT")
            }
            b'h' => {
                let index = self.uint(1)?;
                self.get(index)
            }
            b'j' => {
                let index = self.uint(4)?;
                self.get(index)
            }
            other => Err(match opcode_name(other) {
                Some(name) => PickleFault::UnsupportedOpcode {
                    opcode: other,
                    name,
                },
                None => PickleFault::UnknownOpcode { opcode: other },
            }),
        }
    }

    // --- reading the input ---

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let bytes = self.bytes;
        let end = self.pos.checked_add(n).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            let needed = n.saturating_sub(bytes.len().saturating_sub(self.pos));
            return Err(PickleFault::Truncated {
                needed: needed as u64,
            });
        };
        let out = bytes.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(out)
    }

    /// A little-endian unsigned field of `width` bytes.
    fn uint(&mut self, width: usize) -> Step<u64> {
        let b = self.take(width)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// A length field of `width` bytes, checked against the budget, then
    /// that many bytes.
    fn take_len(&mut self, width: usize, opcode: &'static str) -> Step<&'a [u8]> {
        let len = self.uint(width)?;
        // FRAME lengths are bounded by the input instead: a frame is only
        // a hint about how the rest is grouped.
        let limit = if opcode == "FRAME" {
            self.limits.max_input as u64
        } else {
            self.limits.max_len as u64
        };
        if len > limit {
            return Err(PickleFault::LengthTooLarge { opcode, len, limit });
        }
        let n =
            usize::try_from(len).map_err(|_| PickleFault::LengthTooLarge { opcode, len, limit })?;
        if opcode == "FRAME" {
            // Check the frame fits, but leave its bytes to be decoded.
            let remaining = self.bytes.len().saturating_sub(self.pos);
            if n > remaining {
                return Err(PickleFault::Truncated {
                    needed: (n - remaining) as u64,
                });
            }
            return Ok(&[]);
        }
        self.take(n)
    }

    /// A newline-terminated line of at most `max_len` bytes.
    fn line(&mut self, opcode: &'static str) -> Step<String> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let window = rest
            .get(..self.limits.max_len.saturating_add(1))
            .unwrap_or(rest);
        let Some(n) = window.iter().position(|&b| b == b'\n') else {
            if window.len() < rest.len() {
                return Err(PickleFault::LengthTooLarge {
                    opcode,
                    len: rest.len() as u64,
                    limit: self.limits.max_len as u64,
                });
            }
            return Err(PickleFault::Truncated { needed: 1 });
        };
        let text = self.take(n)?;
        self.take(1)?;
        String::from_utf8(text.to_vec()).map_err(|_| PickleFault::BadUtf8 { opcode })
    }

    // --- the stack, the arena, the memo ---

    fn alloc(&mut self, node: Node) -> Step<Id> {
        if self.nodes.len() >= self.limits.max_values {
            return Err(PickleFault::TooManyValues {
                limit: self.limits.max_values as u64,
            });
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn push_id(&mut self, id: Id) -> Step<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(PickleFault::TooDeep {
                what: "the stack",
                limit: self.limits.max_stack as u64,
            });
        }
        self.stack.push(id);
        Ok(())
    }

    fn push(&mut self, node: Node) -> Step<()> {
        let id = self.alloc(node)?;
        self.push_id(id)
    }

    fn leaf(&mut self, v: Value) -> Step<()> {
        self.push(Node::Leaf(v))
    }

    /// The stack length below which the innermost mark's items start;
    /// popping must not reach below it.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, opcode: &'static str) -> Step<Id> {
        if self.stack.len() <= self.floor() {
            return Err(PickleFault::StackUnderflow { opcode });
        }
        self.stack
            .pop()
            .ok_or(PickleFault::StackUnderflow { opcode })
    }

    fn top(&self, opcode: &'static str) -> Step<Id> {
        if self.stack.len() <= self.floor() {
            return Err(PickleFault::StackUnderflow { opcode });
        }
        self.stack
            .last()
            .copied()
            .ok_or(PickleFault::StackUnderflow { opcode })
    }

    fn mark(&mut self) -> Step<()> {
        if self.marks.len() >= self.limits.max_depth {
            return Err(PickleFault::TooDeep {
                what: "the MARK nesting",
                limit: self.limits.max_depth as u64,
            });
        }
        self.marks.push(self.stack.len());
        Ok(())
    }

    /// The items above the innermost mark, removing them and the mark.
    fn pop_mark(&mut self, opcode: &'static str) -> Step<Vec<Id>> {
        let at = self.marks.pop().ok_or(PickleFault::NoMark { opcode })?;
        Ok(self.stack.split_off(at.min(self.stack.len())))
    }

    fn dup(&mut self) -> Step<()> {
        let id = self.top("DUP")?;
        self.push_id(id)
    }

    fn put(&mut self, index: u64, opcode: &'static str) -> Step<()> {
        let id = self.top(opcode)?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&index) {
            return Err(PickleFault::MemoFull {
                limit: self.limits.max_memo as u64,
            });
        }
        self.memo.insert(index, id);
        Ok(())
    }

    fn get(&mut self, index: u64) -> Step<()> {
        let id = *self
            .memo
            .get(&index)
            .ok_or(PickleFault::MemoMissing { index })?;
        self.push_id(id)
    }

    // --- opcodes ---

    fn proto(&mut self) -> Step<()> {
        let version = self.uint(1)? as u8;
        if !(2..=5).contains(&version) {
            return Err(PickleFault::Protocol { version });
        }
        Ok(())
    }

    fn int_le(&mut self, width: usize, signed: bool) -> Step<()> {
        let raw = self.uint(width)?;
        let v = if signed {
            i128::from(raw as u32 as i32)
        } else {
            i128::from(raw)
        };
        self.leaf(Value::Int(v))
    }

    /// `LONG1`/`LONG4`: a little-endian two's-complement integer whose
    /// byte count precedes it.
    fn long(&mut self, width: usize) -> Step<()> {
        let n = self.uint(width)?;
        if n > 16 {
            return Err(PickleFault::IntTooLarge { bytes: n });
        }
        let b = self.take(n as usize)?;
        let mut v: i128 = 0;
        for (i, &x) in b.iter().enumerate() {
            v |= i128::from(x) << (8 * i);
        }
        // Sign-extend from the top byte written.
        if let Some(&last) = b.last()
            && last & 0x80 != 0
            && b.len() < 16
        {
            v -= 1i128 << (8 * b.len());
        }
        self.leaf(Value::Int(v))
    }

    fn float(&mut self) -> Step<()> {
        let b = self.take(8)?;
        let raw = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        self.leaf(Value::Float(f64::from_bits(raw)))
    }

    fn text(&mut self, width: usize, opcode: &'static str) -> Step<()> {
        let b = self.take_len(width, opcode)?;
        let s = std::str::from_utf8(b).map_err(|_| PickleFault::BadUtf8 { opcode })?;
        self.leaf(Value::Str(s.to_string()))
    }

    fn binary(&mut self, width: usize, opcode: &'static str) -> Step<()> {
        let b = self.take_len(width, opcode)?;
        self.leaf(Value::Bytes(b.to_vec()))
    }

    fn tuple_n(&mut self, n: usize, opcode: &'static str) -> Step<()> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop(opcode)?);
        }
        items.reverse();
        self.push(Node::Tuple(items))
    }

    fn append(&mut self, many: bool) -> Step<()> {
        let (opcode, items) = if many {
            ("APPENDS", self.pop_mark("APPENDS")?)
        } else {
            ("APPEND", vec![self.pop("APPEND")?])
        };
        let list = self.top(opcode)?;
        match self.nodes.get_mut(list) {
            Some(Node::List(v)) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(PickleFault::WrongType {
                opcode,
                expected: "a list below its items",
            }),
        }
    }

    fn setitems(&mut self, many: bool) -> Step<()> {
        let (opcode, items) = if many {
            ("SETITEMS", self.pop_mark("SETITEMS")?)
        } else {
            let v = self.pop("SETITEM")?;
            let k = self.pop("SETITEM")?;
            ("SETITEM", vec![k, v])
        };
        let kv = pairs(items, opcode)?;
        let dict = self.top(opcode)?;
        match self.nodes.get_mut(dict) {
            Some(Node::Dict(v)) => {
                v.extend(kv);
                Ok(())
            }
            _ => Err(PickleFault::WrongType {
                opcode,
                expected: "a dict below its items",
            }),
        }
    }

    fn global(&mut self) -> Step<()> {
        let module = self.line("GLOBAL")?;
        let name = self.line("GLOBAL")?;
        self.push_global(module, name)
    }

    fn stack_global(&mut self) -> Step<()> {
        let name = self.pop("STACK_GLOBAL")?;
        let module = self.pop("STACK_GLOBAL")?;
        let (Some(module), Some(name)) = (self.string(module), self.string(name)) else {
            return Err(PickleFault::WrongType {
                opcode: "STACK_GLOBAL",
                expected: "two strings",
            });
        };
        let (module, name) = (module.to_string(), name.to_string());
        self.push_global(module, name)
    }

    fn string(&self, id: Id) -> Option<&str> {
        match self.nodes.get(id) {
            Some(Node::Leaf(Value::Str(s))) => Some(s),
            _ => None,
        }
    }

    fn push_global(&mut self, module: String, name: String) -> Step<()> {
        let known = self
            .allowed
            .iter()
            .any(|a| a.module == module && a.name == name);
        if !known {
            return Err(PickleFault::UnknownGlobal {
                global: format!("{module}.{name}"),
            });
        }
        self.leaf(Value::Global(Global { module, name }))
    }

    /// `REDUCE` (callable, args) and `NEWOBJ` (class, args): records the
    /// call, if the callable is allowed to be called.
    fn apply(&mut self, opcode: &'static str) -> Step<()> {
        let args = self.pop(opcode)?;
        let callable = self.pop(opcode)?;
        let class = match self.nodes.get(callable) {
            Some(Node::Leaf(Value::Global(g))) if self.is_callable(g) => g.clone(),
            Some(Node::Leaf(Value::Global(g))) => {
                return Err(PickleFault::NotCallable {
                    opcode,
                    callable: g.to_string(),
                });
            }
            _ => {
                return Err(PickleFault::NotCallable {
                    opcode,
                    callable: "a value that is not a global".into(),
                });
            }
        };
        let args = match self.nodes.get(args) {
            Some(Node::Tuple(items)) => items.clone(),
            _ => {
                return Err(PickleFault::WrongType {
                    opcode,
                    expected: "an argument tuple",
                });
            }
        };
        // An OrderedDict is filled by SETITEMS after it is made, so it
        // has to be a dict here.
        if class.is("collections", "OrderedDict") && args.is_empty() {
            return self.push(Node::Dict(Vec::new()));
        }
        self.push(Node::Object {
            class,
            args,
            state: None,
        })
    }

    fn is_callable(&self, g: &Global) -> bool {
        self.allowed
            .iter()
            .any(|a| a.callable && a.module == g.module && a.name == g.name)
    }

    fn build(&mut self) -> Step<()> {
        let state = self.pop("BUILD")?;
        let target = self.top("BUILD")?;
        match self.nodes.get_mut(target) {
            Some(Node::Object {
                state: s @ None, ..
            }) => {
                *s = Some(state);
                Ok(())
            }
            _ => Err(PickleFault::WrongType {
                opcode: "BUILD",
                expected: "an object without state",
            }),
        }
    }

    // --- the result ---

    /// The tree under `id`, counting nodes into `count` and refusing
    /// depth beyond the limit and cycles (`on_path` marks the nodes
    /// being built).
    fn tree(&self, id: Id, depth: usize, count: &mut usize, on_path: &mut [bool]) -> Step<Value> {
        if depth > self.limits.max_depth {
            return Err(PickleFault::TooDeep {
                what: "the result",
                limit: self.limits.max_depth as u64,
            });
        }
        *count += 1;
        if *count > self.limits.max_values {
            return Err(PickleFault::TooManyValues {
                limit: self.limits.max_values as u64,
            });
        }
        let node = self.nodes.get(id).ok_or(PickleFault::Cycle)?;
        if let Node::Leaf(v) = node {
            return Ok(v.clone());
        }
        match on_path.get_mut(id) {
            Some(seen) if *seen => return Err(PickleFault::Cycle),
            Some(seen) => *seen = true,
            None => return Err(PickleFault::Cycle),
        }
        let mut sub = |i: Id| self.tree(i, depth + 1, count, on_path);
        let value = match node {
            Node::Leaf(v) => v.clone(),
            Node::Tuple(items) => Value::Tuple(items.iter().map(|&i| sub(i)).collect::<Step<_>>()?),
            Node::List(items) => Value::List(items.iter().map(|&i| sub(i)).collect::<Step<_>>()?),
            Node::Dict(items) => Value::Dict(
                items
                    .iter()
                    .map(|&(k, v)| Ok((sub(k)?, sub(v)?)))
                    .collect::<Step<_>>()?,
            ),
            Node::Object { class, args, state } => Value::Object {
                class: class.clone(),
                args: args.iter().map(|&i| sub(i)).collect::<Step<_>>()?,
                state: match state {
                    Some(s) => Some(Box::new(sub(*s)?)),
                    None => None,
                },
            },
            Node::Pid(p) => Value::PersistentId(Box::new(sub(*p)?)),
        };
        if let Some(seen) = on_path.get_mut(id) {
            *seen = false;
        }
        Ok(value)
    }
}

/// Key-value pairs from a flat run of items.
fn pairs(items: Vec<Id>, opcode: &'static str) -> Step<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleFault::WrongType {
            opcode,
            expected: "an even number of items (keys and values)",
        });
    }
    Ok(items
        .chunks_exact(2)
        .filter_map(|kv| match kv {
            &[k, v] => Some((k, v)),
            _ => None,
        })
        .collect())
}

/// The pickletools names of the opcodes the machine refuses, so that the
/// error says what the file tried.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
