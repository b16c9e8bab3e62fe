//! Why a pickle is refused: the file, the opcode's offset, and one
//! variant per fault.

use super::*;

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
