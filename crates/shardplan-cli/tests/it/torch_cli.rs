//! `shardplan reshard` and `show` on PyTorch and Hugging Face sources:
//! every source format to every output format, hostile files refused with
//! their error code and nothing written.

use std::path::PathBuf;

use crate::common::{shardplan, torch_cases};

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardplan-torch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `shardplan reshard` on the torch cases: the format is detected, every
/// pair of source and output formats runs, and faulty sources end in their
/// own error code, with nothing written.
#[test]
fn the_command_takes_every_source_and_refuses_hostile_ones() {
    let Some(root) = torch_cases() else { return };
    let src = |case: &str| root.join(case).display().to_string();
    let out = scratch("cli");
    let ok: [(&str, &str); 4] = [
        ("fsdp4_uneven/checkpoint", "hf"),
        ("tp2_dp2/checkpoint", "dcp"),
        ("hf_writer_fsdp2/checkpoint", "safetensors"),
        ("hf_sharded_llama/model", "ckpt"),
    ];
    for (i, (case, format)) in ok.iter().enumerate() {
        let dir = out.join(format!("ok{i}"));
        let o = shardplan(&[
            "reshard",
            "--src",
            &src(case),
            "--out",
            &dir.display().to_string(),
            "--format",
            format,
            "--max-shard-size",
            "2KB",
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{case} -> {format}: {stderr}");
    }
    let bad: [(&str, &[&str], &str); 5] = [
        (
            "hostile/eval_global",
            &[],
            "shardplan::formats::pickle::unknown_global",
        ),
        (
            "hostile/os_system_metadata",
            &[],
            "shardplan::formats::pickle::unknown_global",
        ),
        (
            "hostile/short_distcp",
            &[],
            "shardplan::formats::dcp::short_file",
        ),
        ("hostile/deep_nesting", &[], "shardplan::formats::pickle::"),
        (
            "tp2_dp2/checkpoint",
            &["--src-strategy", "specs/tiny-model.yaml"],
            "shardplan::reshard::needless_strategy",
        ),
    ];
    for (i, (case, extra, code)) in bad.iter().enumerate() {
        let dir = out.join(format!("bad{i}"));
        let mut args = vec![
            "reshard".to_string(),
            "--src".into(),
            src(case),
            "--out".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let o = shardplan(&refs);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(code), "{case}: expected {code} in {stderr}");
        assert!(!dir.exists(), "{case}: nothing is written");
        eprintln!("{case}: refused in {:?}", t0.elapsed());
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `shardplan show` on a DCP folder draws its chunks as the layout they are.
#[test]
fn show_draws_a_dcp_folder() {
    let Some(root) = torch_cases() else { return };
    let dir = root.join("fsdp4_uneven/checkpoint").display().to_string();
    let o = shardplan(&["show", &dir, "--tensor", "model.embed_tokens.weight"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "shape [50, 16], layout boxes(4 distinct on 4 rank(s)), mesh [rank=4]"
    );
    // torch.chunk's rows: 13, 13, 13, 11.
    for (rows, rank) in [
        ("0..13", "r0"),
        ("13..26", "r1"),
        ("26..39", "r2"),
        ("39..50", "r3"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with(rows) && l.contains(rank)),
            "{rows} on {rank}: {out}"
        );
    }
    // A spec still needs its strategy.
    let o = shardplan(&["show", "specs/tiny-model.yaml", "--tensor", "x"]);
    assert_eq!(o.status.code(), Some(2));
}
