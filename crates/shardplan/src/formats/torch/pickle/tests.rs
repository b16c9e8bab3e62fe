//! The machine on hand-built pickles: what it decodes, and every way it
//! refuses.

use super::*;

fn run_with(bytes: &[u8], limits: &PickleLimits) -> Result<Value, PickleError> {
    unpickle(Path::new("t.pkl"), bytes, DCP_METADATA_GLOBALS, limits)
}

fn run(bytes: &[u8]) -> Result<Value, PickleError> {
    run_with(bytes, &PickleLimits::STANDARD)
}

#[track_caller]
fn check(bytes: &[u8], expect: Value) {
    match run(bytes) {
        Ok(v) => assert_eq!(v, expect, "{bytes:?}"),
        Err(e) => panic!("{e} for {bytes:?}"),
    }
}

#[track_caller]
fn fault(bytes: &[u8]) -> PickleFault {
    match run(bytes) {
        Ok(v) => panic!("accepted {bytes:?} as {v:?}"),
        Err(e) => e.kind,
    }
}

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

fn global(module: &str, name: &str) -> Global {
    Global {
        module: module.into(),
        name: name.into(),
    }
}

/// `SHORT_BINUNICODE text`.
fn short_str(text: &str) -> Vec<u8> {
    let mut out = vec![0x8c, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// `module name STACK_GLOBAL`.
fn stack_global(module: &str, name: &str) -> Vec<u8> {
    let mut out = short_str(module);
    out.extend(short_str(name));
    out.push(0x93);
    out
}

fn program(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = b"\x80\x04".to_vec();
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b'.');
    out
}

#[test]
fn scalars() {
    check(b"\x80\x02N.", Value::None);
    check(b"\x80\x02\x88.", Value::Bool(true));
    check(b"\x80\x02\x89.", Value::Bool(false));
    check(b"\x80\x02K\xff.", Value::Int(255));
    check(b"\x80\x02M\x29\x08.", Value::Int(2089));
    check(b"\x80\x02J\xfe\xff\xff\xff.", Value::Int(-2));
    check(b"\x80\x02\x8a\x01\xff.", Value::Int(-1));
    check(b"\x80\x02\x8a\x00.", Value::Int(0));
    check(
        b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
        Value::Int(1 << 64),
    );
    check(
        b"\x80\x02G\x3f\xf8\x00\x00\x00\x00\x00\x00.",
        Value::Float(1.5),
    );
    check(b"\x80\x02\x8c\x02ab.", s("ab"));
    check(b"\x80\x02X\x03\x00\x00\x00\xc3\xa9!.", s("é!"));
    check(b"\x80\x02C\x02\x00\x01.", Value::Bytes(vec![0, 1]));
    check(b"\x80\x02B\x01\x00\x00\x00z.", Value::Bytes(vec![b'z']));
}

#[test]
fn containers_and_memo() {
    // [1, 2], memoized, fetched again into a tuple of both.
    check(
        b"\x80\x02]\x94(K\x01K\x02eh\x00\x86.",
        Value::Tuple(vec![
            Value::List(vec![Value::Int(1), Value::Int(2)]),
            Value::List(vec![Value::Int(1), Value::Int(2)]),
        ]),
    );
    // {'a': 1, 'b': (None,)} through SETITEM and SETITEMS.
    check(
        b"\x80\x02}\x8c\x01aK\x01s(\x8c\x01bN\x85u.",
        Value::Dict(vec![
            (s("a"), Value::Int(1)),
            (s("b"), Value::Tuple(vec![Value::None])),
        ]),
    );
    check(
        b"\x80\x02(K\x01K\x02K\x03t.",
        Value::Tuple(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
    );
    check(b"\x80\x02).", Value::Tuple(vec![]));
    check(b"\x80\x02]K\x05a.", Value::List(vec![Value::Int(5)]));
    // A container filled after it was memoized is the same container.
    check(
        b"\x80\x02]q\x05K\x07a0h\x05.",
        Value::List(vec![Value::Int(7)]),
    );
}

#[test]
fn allowed_globals_become_records() {
    let meta = "torch.distributed.checkpoint.metadata";
    // ChunkStorageMetadata() with state {'offsets': torch.Size((0, 4))}.
    let bytes = program(&[
        &stack_global(meta, "ChunkStorageMetadata"),
        b")\x81}(",
        &short_str("offsets"),
        &stack_global("torch", "Size"),
        b"K\x00K\x04\x86\x85Rub",
    ]);
    let size = Value::Object {
        class: global("torch", "Size"),
        args: vec![Value::Tuple(vec![Value::Int(0), Value::Int(4)])],
        state: None,
    };
    check(
        &bytes,
        Value::Object {
            class: global(meta, "ChunkStorageMetadata"),
            args: vec![],
            state: Some(Box::new(Value::Dict(vec![(s("offsets"), size)]))),
        },
    );
    // A dtype is only named.
    check(
        &program(&[&stack_global("torch", "bfloat16")]),
        Value::Global(global("torch", "bfloat16")),
    );
    // The text GLOBAL form of protocol 2.
    check(
        b"\x80\x02ctorch\nfloat16\n.",
        Value::Global(global("torch", "float16")),
    );
    // OrderedDict() is a dict that SETITEMS fills.
    check(
        b"\x80\x02ccollections\nOrderedDict\n)R\x8c\x01kK\x01s.",
        Value::Dict(vec![(s("k"), Value::Int(1))]),
    );
}

#[test]
fn persistent_ids_are_records() {
    check(
        b"\x80\x02(\x8c\x07storageK\x01tQ.",
        Value::PersistentId(Box::new(Value::Tuple(vec![s("storage"), Value::Int(1)]))),
    );
}

#[test]
fn refused_globals_name_the_file_and_opcode() {
    let e = run(b"\x80\x02cos\nsystem\n\x8c\x04true\x85R.").unwrap_err();
    assert_eq!(
        e.kind,
        PickleFault::UnknownGlobal {
            global: "os.system".into()
        }
    );
    assert_eq!((e.file.as_path(), e.offset), (Path::new("t.pkl"), 2));
    let code = miette::Diagnostic::code(&e).map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("shardplan::formats::pickle::unknown_global")
    );
    let eval = program(&[b"}", &stack_global("builtins", "eval")]);
    let e = run(&eval).unwrap_err();
    assert!(
        matches!(&e.kind, PickleFault::UnknownGlobal { global } if global == "builtins.eval"),
        "{e}"
    );
    // The offset is that of STACK_GLOBAL, after the two strings.
    assert_eq!(e.offset as usize, eval.len() - 2);
    // Near misses of allowed names.
    for (m, n) in [
        ("torch", "load"),
        ("torch.distributed", "Metadata"),
        ("Torch", "Size"),
    ] {
        let f = fault(&program(&[&stack_global(m, n)]));
        assert!(
            matches!(f, PickleFault::UnknownGlobal { .. }),
            "{m}.{n}: {f}"
        );
    }
}

#[test]
fn reduce_only_on_allowed_callables() {
    // torch.float32 is allowed as a name, not as a callable.
    let f = fault(&program(&[&stack_global("torch", "float32"), b")R"]));
    assert!(
        matches!(&f, PickleFault::NotCallable { opcode: "REDUCE", callable } if callable == "torch.float32"),
        "{f}"
    );
    // A string is not a callable.
    let f = fault(&program(&[&short_str("os.system"), b")R"]));
    assert!(matches!(f, PickleFault::NotCallable { .. }), "{f}");
    let f = fault(&program(&[&short_str("x"), b")\x81"]));
    assert!(
        matches!(
            f,
            PickleFault::NotCallable {
                opcode: "NEWOBJ",
                ..
            }
        ),
        "{f}"
    );
    // The arguments must be a tuple.
    let f = fault(&program(&[&stack_global("torch", "Size"), b"]R"]));
    assert!(matches!(f, PickleFault::WrongType { .. }), "{f}");
}

#[test]
fn depth_is_bounded() {
    let limit = PickleLimits::STANDARD.max_depth;
    let mut pushes = b"\x80\x02".to_vec();
    pushes.extend(std::iter::repeat_n(
        b']',
        PickleLimits::STANDARD.max_stack + 1,
    ));
    pushes.push(b'.');
    let f = fault(&pushes);
    assert!(
        matches!(
            f,
            PickleFault::TooDeep {
                what: "the stack",
                ..
            }
        ),
        "{f}"
    );
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', limit + 1));
    let f = fault(&marks);
    assert!(
        matches!(
            f,
            PickleFault::TooDeep {
                what: "the MARK nesting",
                ..
            }
        ),
        "{f}"
    );
    // Lists nested through the memo, with a stack of two: only the result
    // is deep.
    let mut nested = b"\x80\x02]r\x00\x00\x00\x000".to_vec();
    for k in 1..=(limit as u32 + 1) {
        nested.push(b'j');
        nested.extend((k - 1).to_le_bytes());
        nested.extend(b"]r");
        nested.extend(k.to_le_bytes());
        nested.extend(b"a0");
    }
    nested.extend(b"j\x00\x00\x00\x00.");
    let f = fault(&nested);
    assert!(
        matches!(
            f,
            PickleFault::TooDeep {
                what: "the result",
                ..
            }
        ),
        "{f}"
    );
}

#[test]
fn memo_faults() {
    assert_eq!(
        fault(b"\x80\x02h\x05."),
        PickleFault::MemoMissing { index: 5 }
    );
    assert_eq!(
        fault(b"\x80\x02j\x00\x01\x00\x00."),
        PickleFault::MemoMissing { index: 256 }
    );
    assert!(matches!(
        fault(b"\x80\x02\x94."),
        PickleFault::StackUnderflow { .. }
    ));
    let tight = PickleLimits {
        max_memo: 2,
        ..PickleLimits::STANDARD
    };
    let e = run_with(b"\x80\x02N\x94\x94\x94.", &tight).unwrap_err();
    assert_eq!(e.kind, PickleFault::MemoFull { limit: 2 });
}

#[test]
fn cycles_and_blowups_are_refused() {
    // A list appended to itself.
    assert_eq!(fault(b"\x80\x02]q\x00h\x00a."), PickleFault::Cycle);
    // Each tuple holds its predecessor twice: 2^40 nodes if expanded.
    let mut laughs = b"\x80\x02Nq\x000".to_vec();
    for k in 1..=40u8 {
        laughs.extend([b'h', k - 1, b'h', k - 1, 0x86, b'q', k, b'0']);
    }
    laughs.extend(b"h\x28.");
    let limits = PickleLimits {
        max_values: 10_000,
        ..PickleLimits::STANDARD
    };
    let e = run_with(&laughs, &limits).unwrap_err();
    assert_eq!(e.kind, PickleFault::TooManyValues { limit: 10_000 });
}

#[test]
fn truncated_input() {
    for bytes in [
        &b""[..],
        b"\x80",
        b"\x80\x02",
        b"\x80\x02K\x01",
        b"\x80\x02X\x10\x00\x00\x00ab",
        b"\x80\x02J\x01\x00",
        b"\x80\x02cos\nsys",
        b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
    ] {
        let f = fault(bytes);
        assert!(matches!(f, PickleFault::Truncated { .. }), "{bytes:?}: {f}");
    }
}

#[test]
fn huge_length_fields() {
    for (bytes, opcode) in [
        (
            &b"\x80\x04\x8d\x00\x00\x00\x00\x00\x00\x00\x10."[..],
            "BINUNICODE8",
        ),
        (b"\x80\x02X\xff\xff\xff\xff.", "BINUNICODE"),
        (b"\x80\x02B\xff\xff\xff\xff.", "BINBYTES"),
        (
            b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
            "BINBYTES8",
        ),
        (b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff.", "FRAME"),
    ] {
        let f = fault(bytes);
        assert!(
            matches!(f, PickleFault::LengthTooLarge { opcode: o, .. } if o == opcode),
            "{bytes:?}: {f}"
        );
    }
    assert_eq!(
        fault(b"\x80\x02\x8a\x11."),
        PickleFault::IntTooLarge { bytes: 17 }
    );
    let mut long_line = b"\x80\x02c".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', (1 << 20) + 10));
    assert!(matches!(
        fault(&long_line),
        PickleFault::LengthTooLarge {
            opcode: "GLOBAL",
            ..
        }
    ));
    let small = PickleLimits {
        max_input: 4,
        ..PickleLimits::STANDARD
    };
    let e = run_with(b"\x80\x02N.\x00", &small).unwrap_err();
    assert_eq!(e.kind, PickleFault::InputTooLarge { len: 5, limit: 4 });
}

#[test]
fn opcodes_outside_the_subset() {
    assert_eq!(
        fault(b"\x80\x02\xff."),
        PickleFault::UnknownOpcode { opcode: 0xff }
    );
    assert_eq!(
        fault(b"\x80\x02(i__main__\nX\n."),
        PickleFault::UnsupportedOpcode {
            opcode: b'i',
            name: "INST"
        }
    );
    assert_eq!(fault(b"\x80\x01N."), PickleFault::Protocol { version: 1 });
    assert_eq!(fault(b"\x80\x06N."), PickleFault::Protocol { version: 6 });
    assert_eq!(
        fault(b"\x80\x02K\x01K\x02."),
        PickleFault::Unbalanced {
            values: 2,
            marks: 0
        }
    );
    assert_eq!(
        fault(b"\x80\x02\x8c\x01\xff."),
        PickleFault::BadUtf8 {
            opcode: "SHORT_BINUNICODE"
        }
    );
    assert!(matches!(
        fault(b"\x80\x02K\x01a."),
        PickleFault::StackUnderflow { .. } | PickleFault::WrongType { .. }
    ));
    assert_eq!(
        fault(b"\x80\x02t."),
        PickleFault::NoMark { opcode: "TUPLE" }
    );
    // Popping below a MARK is an underflow, not a reach into the items
    // before it.
    assert!(matches!(
        fault(b"\x80\x02]K\x01(a."),
        PickleFault::StackUnderflow { opcode: "APPEND" }
    ));
}

#[test]
fn every_fault_has_a_stable_code() {
    let e = run(b"\x80\x02h\x05.").unwrap_err();
    let code = miette::Diagnostic::code(&e).map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("shardplan::formats::pickle::memo_missing")
    );
    assert!(miette::Diagnostic::help(&e).is_some());
    assert!(
        e.to_string()
            .starts_with("t.pkl: pickle opcode at byte 2: "),
        "{e}"
    );
}

/// `unpickle`'s example: an int read back, a global outside the allow-list
/// refused, never imported.
#[test]
fn unpickle_example() {
    // PROTO 2, BININT1 7, STOP
    let v = unpickle(
        Path::new("x"),
        b"\x80\x02K\x07.",
        DCP_METADATA_GLOBALS,
        &PickleLimits::STANDARD,
    );
    assert_eq!(v.unwrap(), Value::Int(7));
    // GLOBAL 'os system': refused, never imported
    let e = unpickle(
        Path::new("x"),
        b"\x80\x02cos\nsystem\n.",
        DCP_METADATA_GLOBALS,
        &PickleLimits::STANDARD,
    );
    assert!(matches!(
        e.unwrap_err().kind,
        PickleFault::UnknownGlobal { .. }
    ));
}
