//! The machine: opcodes run over a stack of value nodes, within the
//! limits, until `STOP`.

use super::*;

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
