//! A pickle emitter for the few object graphs PyTorch files hold: the DCP
//! `.metadata` (protocol 4) and the `data.pkl` of a `torch.save` archive
//! (protocol 2). It writes opcodes and nothing else: no object model, no
//! reading. Callers build each object the way Python's pickler would
//! (`NEWOBJ` + `BUILD` for dataclasses, `REDUCE` for `torch.Size`), so what
//! torch unpickles is the object the reference files hold.
//!
//! Output is a pure function of the calls made: memo indices are assigned in
//! call order and the memo tables are only looked up, never iterated.

use std::collections::HashMap;

/// Which pickle protocol to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `GLOBAL`, `BINPUT` and `BINUNICODE`, as `torch.save` writes `data.pkl`.
    Two,
    /// `STACK_GLOBAL`, `MEMOIZE`, `SHORT_BINUNICODE` and frames, as
    /// `pickle.dumps(protocol=4)` writes the DCP `.metadata`.
    Four,
}

/// Python's pickler closes a frame once it holds this many bytes; frames
/// are optional for the reader, but large ones cost it a single huge read.
const FRAME_TARGET: usize = 64 * 1024;

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
}

/// Writes one pickle. Each method appends one value or one opcode; the
/// caller is responsible for a well-formed stack (the tests unpickle).
#[derive(Debug)]
pub(crate) struct Pickler {
    protocol: Protocol,
    /// Committed bytes: the header and every closed frame.
    out: Vec<u8>,
    /// The open frame (protocol 4) or everything after the header.
    frame: Vec<u8>,
    memo_len: u32,
    globals: HashMap<(String, String), u32>,
    strings: HashMap<String, u32>,
}

impl Pickler {
    pub(crate) fn new(protocol: Protocol) -> Pickler {
        let version = match protocol {
            Protocol::Two => 2,
            Protocol::Four => 4,
        };
        Pickler {
            protocol,
            out: vec![op::PROTO, version],
            frame: Vec::new(),
            memo_len: 0,
            globals: HashMap::new(),
            strings: HashMap::new(),
        }
    }

    /// Writes `STOP` and returns the pickle.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.frame.push(op::STOP);
        self.commit_frame();
        self.out
    }

    fn commit_frame(&mut self) {
        if self.frame.is_empty() {
            return;
        }
        if self.protocol == Protocol::Four {
            self.out.push(op::FRAME);
            self.out
                .extend_from_slice(&(self.frame.len() as u64).to_le_bytes());
        }
        self.out.append(&mut self.frame);
    }

    /// Frames may only be cut between opcodes, so every method ends here.
    fn end_op(&mut self) {
        if self.protocol == Protocol::Four && self.frame.len() >= FRAME_TARGET {
            self.commit_frame();
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.frame.extend_from_slice(bytes);
    }

    fn opcode(&mut self, code: u8) {
        self.frame.push(code);
        self.end_op();
    }

    /// Stores the top of the stack in the memo; returns its index.
    pub(crate) fn memoize(&mut self) -> u32 {
        let idx = self.memo_len;
        self.memo_len += 1;
        match self.protocol {
            Protocol::Four => self.frame.push(op::MEMOIZE),
            Protocol::Two => {
                if let Ok(small) = u8::try_from(idx) {
                    self.raw(&[op::BINPUT, small]);
                } else {
                    self.frame.push(op::LONG_BINPUT);
                    self.raw(&idx.to_le_bytes());
                }
            }
        }
        self.end_op();
        idx
    }

    /// Pushes a memoized value again.
    pub(crate) fn get(&mut self, idx: u32) {
        if let Ok(small) = u8::try_from(idx) {
            self.raw(&[op::BINGET, small]);
        } else {
            self.frame.push(op::LONG_BINGET);
            self.raw(&idx.to_le_bytes());
        }
        self.end_op();
    }

    pub(crate) fn mark(&mut self) {
        self.opcode(op::MARK);
    }

    pub(crate) fn none(&mut self) {
        self.opcode(op::NONE);
    }

    pub(crate) fn bool(&mut self, value: bool) {
        self.opcode(if value { op::NEWTRUE } else { op::NEWFALSE });
    }

    /// A non-negative int, in the shortest form Python's pickler uses.
    pub(crate) fn int(&mut self, value: u64) {
        if let Ok(v) = u8::try_from(value) {
            self.raw(&[op::BININT1, v]);
        } else if let Ok(v) = u16::try_from(value) {
            self.frame.push(op::BININT2);
            self.raw(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(value) {
            self.frame.push(op::BININT);
            self.raw(&v.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, shortest; a set top bit
            // would read as negative, so it takes one more (zero) byte.
            let mut bytes = value.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] >= 0x80 {
                bytes.push(0);
            }
            self.raw(&[op::LONG1, bytes.len() as u8]);
            self.raw(&bytes);
        }
        self.end_op();
    }

    /// A `str`, not memoized.
    pub(crate) fn str_plain(&mut self, s: &str) {
        let len = s.len();
        match (self.protocol, u8::try_from(len), u32::try_from(len)) {
            (Protocol::Four, Ok(short), _) => self.raw(&[op::SHORT_BINUNICODE, short]),
            (_, _, Ok(n)) => {
                self.frame.push(op::BINUNICODE);
                self.raw(&n.to_le_bytes());
            }
            (_, _, Err(_)) => {
                self.frame.push(op::BINUNICODE8);
                self.raw(&(len as u64).to_le_bytes());
            }
        }
        self.raw(s.as_bytes());
        self.end_op();
    }

    /// A `str`, memoized by value: a repeated field name or path is written
    /// once and fetched afterwards, which keeps `.metadata` small.
    pub(crate) fn str(&mut self, s: &str) {
        if let Some(&idx) = self.strings.get(s) {
            self.get(idx);
            return;
        }
        self.str_plain(s);
        let idx = self.memoize();
        self.strings.insert(s.to_string(), idx);
    }

    /// The global `module.name`, memoized.
    pub(crate) fn global(&mut self, module: &str, name: &str) {
        let key = (module.to_string(), name.to_string());
        if let Some(&idx) = self.globals.get(&key) {
            self.get(idx);
            return;
        }
        match self.protocol {
            Protocol::Four => {
                self.str(module);
                self.str(name);
                self.opcode(op::STACK_GLOBAL);
            }
            Protocol::Two => {
                self.frame.push(op::GLOBAL);
                self.raw(module.as_bytes());
                self.raw(b"\n");
                self.raw(name.as_bytes());
                self.raw(b"\n");
                self.end_op();
            }
        }
        let idx = self.memoize();
        self.globals.insert(key, idx);
    }

    /// Closes a tuple of the `n` values pushed since `start`: `TUPLE1..3`
    /// for short ones (as protocol 2+ does), else `MARK` must have been
    /// pushed by the caller before them (see [`Pickler::tuple_mark_needed`]).
    pub(crate) fn tuple(&mut self, n: usize) {
        match n {
            0 => self.opcode(op::EMPTY_TUPLE),
            1 => self.opcode(op::TUPLE1),
            2 => self.opcode(op::TUPLE2),
            3 => self.opcode(op::TUPLE3),
            _ => self.opcode(op::TUPLE),
        }
    }

    /// Whether a tuple of `n` items is closed with `TUPLE` after a `MARK`.
    pub(crate) fn tuple_mark_needed(n: usize) -> bool {
        n > 3
    }

    /// A tuple of ints; memoized unless empty, as Python's pickler does.
    pub(crate) fn int_tuple(&mut self, values: &[u64]) {
        let marked = Self::tuple_mark_needed(values.len());
        if marked {
            self.mark();
        }
        for &v in values {
            self.int(v);
        }
        self.tuple(values.len());
        if !values.is_empty() {
            self.memoize();
        }
    }

    /// Closes a tuple opened with [`Pickler::mark`], whatever its length.
    pub(crate) fn tuple_from_mark(&mut self) {
        self.opcode(op::TUPLE);
    }

    pub(crate) fn empty_list(&mut self) {
        self.opcode(op::EMPTY_LIST);
    }

    pub(crate) fn appends(&mut self) {
        self.opcode(op::APPENDS);
    }

    pub(crate) fn empty_dict(&mut self) {
        self.opcode(op::EMPTY_DICT);
    }

    pub(crate) fn setitems(&mut self) {
        self.opcode(op::SETITEMS);
    }

    pub(crate) fn reduce(&mut self) {
        self.opcode(op::REDUCE);
    }

    pub(crate) fn newobj(&mut self) {
        self.opcode(op::NEWOBJ);
    }

    pub(crate) fn build(&mut self) {
        self.opcode(op::BUILD);
    }

    pub(crate) fn binpersid(&mut self) {
        self.opcode(op::BINPERSID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_int(value: u64, expect: &[u8]) {
        let mut p = Pickler::new(Protocol::Two);
        p.int(value);
        let bytes = p.finish();
        assert_eq!(&bytes[2..bytes.len() - 1], expect, "int {value}");
    }

    #[test]
    fn ints_take_the_shortest_form() {
        check_int(0, &[b'K', 0]);
        check_int(255, &[b'K', 255]);
        check_int(256, &[b'M', 0, 1]);
        check_int(65535, &[b'M', 255, 255]);
        check_int(65536, &[b'J', 0, 0, 1, 0]);
        check_int(0x7fff_ffff, &[b'J', 0xff, 0xff, 0xff, 0x7f]);
        // 2**31 needs a fifth byte: 0x80 on top would be negative.
        check_int(0x8000_0000, &[0x8a, 5, 0, 0, 0, 0x80, 0]);
        check_int(1 << 32, &[0x8a, 5, 0, 0, 0, 0, 1]);
        check_int(
            u64::MAX,
            &[0x8a, 9, 255, 255, 255, 255, 255, 255, 255, 255, 0],
        );
    }

    #[test]
    fn protocol_2_memoizes_with_binput_and_writes_text_globals() {
        let mut p = Pickler::new(Protocol::Two);
        p.global("torch", "Size");
        p.global("torch", "Size");
        p.str("ab");
        p.str("ab");
        let bytes = p.finish();
        let expect: &[u8] = b"\x80\x02ctorch\nSize\nq\x00h\x00X\x02\x00\x00\x00abq\x01h\x01.";
        assert_eq!(bytes, expect);
    }

    #[test]
    fn protocol_4_frames_everything_after_the_header() {
        let mut p = Pickler::new(Protocol::Four);
        p.global("torch", "Size");
        p.empty_tuple_for_test();
        let bytes = p.finish();
        let body: &[u8] = b"\x8c\x05torch\x94\x8c\x04Size\x94\x93\x94).";
        let mut expect = vec![0x80, 4, 0x95];
        expect.extend_from_slice(&(body.len() as u64).to_le_bytes());
        expect.extend_from_slice(body);
        assert_eq!(bytes, expect);
    }

    #[test]
    fn large_pickles_are_cut_into_frames_between_opcodes() {
        let mut p = Pickler::new(Protocol::Four);
        p.empty_list();
        p.mark();
        let s = "x".repeat(200);
        for _ in 0..1000 {
            p.str_plain(&s);
        }
        p.appends();
        let bytes = p.finish();
        // Walk the frames: each is FRAME + u64 length, and they tile the rest.
        let mut at = 2;
        let mut frames = 0;
        while at < bytes.len() {
            assert_eq!(bytes[at], 0x95);
            let len = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
            assert!(len <= FRAME_TARGET + 203);
            at += 9 + len;
            frames += 1;
        }
        assert_eq!(at, bytes.len());
        assert!(frames >= 3, "{frames} frames");
    }

    impl Pickler {
        fn empty_tuple_for_test(&mut self) {
            self.tuple(0);
        }
    }
}
