//! `shardplan derive` as users run it: the specs it writes pass `check`,
//! `plan` and `simulate`; each fault ends in its exit code and error code.

use crate::common::{repo_root, shardplan, text};
use shardplan::spec::{Spec, parse_spec};

fn parse(text: &str) -> Spec {
    let (spec, diags) = parse_spec("test.yaml", text);
    spec.unwrap_or_else(|| panic!("{diags:?}"))
}

/// The operators section of the tiny model, as the library's tests use it.
const TINY_OPS: &str = include_str!("../../../shardplan/tests/it/derive/tiny_ops.yaml");

#[test]
fn cli_writes_a_spec_that_plan_and_simulate_accept() {
    let dir = std::env::temp_dir().join(format!("shardplan-derive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs: &[(&str, &[&str])] = &[
        ("specs/tiny-model.yaml", &["--target", "infer"]),
        (
            "specs/tiny-model.yaml",
            &["--devices", "8", "--tp", "4", "--pp", "2"],
        ),
        ("specs/mindspore-notation.yaml", &["--devices", "2"]),
        ("specs/mindspore-notation.yaml", &["--devices", "1"]),
        (
            "specs/tiny-model.yaml",
            &["--from", "train", "--target", "single"],
        ),
    ];
    for (i, (spec, args)) in runs.iter().enumerate() {
        let out = dir.join(format!("derived-{i}.yaml"));
        let o = out.to_str().unwrap();
        let mut argv = vec!["derive", spec];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--name", "serve", "-o", o, "--explain"]);
        let r = shardplan(&argv);
        assert_eq!(r.status.code(), Some(0), "{argv:?}: {}", text(&r));
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.starts_with("derive `"), "{stdout}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("wrote "),
            "{}",
            text(&r)
        );
        for cmd in [vec!["check", o], vec!["plan", o], vec!["simulate", o]] {
            let r = shardplan(&cmd);
            assert_eq!(r.status.code(), Some(0), "{cmd:?}: {}", text(&r));
        }
        let r = shardplan(&["simulate", o]);
        assert!(text(&r).contains("every destination element checked: ok"));
    }
    // Without -o, the spec goes to stdout and the explanation to stderr.
    let r = shardplan(&[
        "derive",
        "specs/tiny-model.yaml",
        "--devices",
        "2",
        "--explain",
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let yaml = String::from_utf8_lossy(&r.stdout);
    let spec = parse(&yaml);
    assert!(spec.strategy("derived").is_some());
    assert!(String::from_utf8_lossy(&r.stderr).contains("tp split of dim 0 kept: 2 -> 2"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cli_exit_codes() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["derive", "specs/tiny-model.yaml", "--devices", "7"],
            1,
            "shardplan::derive::indivisible",
        ),
        (
            &[
                "derive",
                "specs/tiny-model.yaml",
                "--devices",
                "6",
                "--tp",
                "4",
            ],
            1,
            "target_shape",
        ),
        (
            &[
                "derive",
                "specs/tiny-model.yaml",
                "--devices",
                "2",
                "--name",
                "infer",
            ],
            1,
            "name_taken",
        ),
        (
            &[
                "derive",
                "specs/invalid/unknown_axis.yaml",
                "--devices",
                "2",
            ],
            1,
            "unknown_axis",
        ),
        (
            &["derive", "specs/tiny-model.yaml", "--target", "nope"],
            2,
            "no mesh `nope`",
        ),
        (
            &[
                "derive",
                "specs/tiny-model.yaml",
                "--from",
                "nope",
                "--devices",
                "2",
            ],
            2,
            "no strategy `nope`",
        ),
        (&["derive", "specs/tiny-model.yaml"], 2, "--target <TARGET>"),
        (
            &[
                "derive",
                "specs/tiny-model.yaml",
                "--target",
                "infer",
                "--devices",
                "2",
            ],
            2,
            "cannot be used with",
        ),
        (
            &["derive", "no/such.yaml", "--devices", "2"],
            2,
            "cannot read",
        ),
    ];
    for (args, status, needle) in cases {
        let r = shardplan(args);
        assert_eq!(r.status.code(), Some(*status), "{args:?}: {}", text(&r));
        assert!(text(&r).contains(needle), "{args:?}: {}", text(&r));
    }
}

#[test]
fn cli_derives_from_operators() {
    let dir = std::env::temp_dir().join(format!("shardplan-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec_file = dir.join("tiny-ops.yaml");
    let tiny = std::fs::read_to_string(repo_root().join("specs/tiny-model.yaml")).unwrap();
    std::fs::write(&spec_file, format!("{tiny}\n{TINY_OPS}")).unwrap();
    let s = spec_file.to_str().unwrap();
    for (i, extra) in [&[][..], &["--devices", "8", "--batch", "16"][..]]
        .iter()
        .enumerate()
    {
        let out = dir.join(format!("derived-{i}.yaml"));
        let o = out.to_str().unwrap();
        let mut argv = vec!["derive", s, "--operators", "-o", o, "--explain"];
        argv.extend_from_slice(extra);
        let r = shardplan(&argv);
        assert_eq!(r.status.code(), Some(0), "{argv:?}: {}", text(&r));
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.contains("redistributions:"), "{stdout}");
        assert!(String::from_utf8_lossy(&r.stderr).contains("redistribution(s) of activations"));
        for cmd in [vec!["check", o], vec!["plan", o], vec!["simulate", o]] {
            let r = shardplan(&cmd);
            assert_eq!(r.status.code(), Some(0), "{cmd:?}: {}", text(&r));
        }
    }
    let fails: &[(&[&str], i32, &str)] = &[
        (&["--batch", "6"], 1, "shardplan::ops::indivisible"),
        (&["--devices", "6"], 1, "shardplan::ops::devices"),
        (&["--tp", "2"], 2, "cannot be used with"),
    ];
    for (extra, status, needle) in fails {
        let mut argv = vec!["derive", s, "--operators"];
        argv.extend_from_slice(extra);
        let r = shardplan(&argv);
        assert_eq!(r.status.code(), Some(*status), "{argv:?}: {}", text(&r));
        assert!(text(&r).contains(needle), "{argv:?}: {}", text(&r));
    }
    let r = shardplan(&["derive", "specs/tiny-model.yaml", "--operators"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(text(&r).contains("has no `operators:` section"));
    std::fs::remove_dir_all(&dir).ok();
}
