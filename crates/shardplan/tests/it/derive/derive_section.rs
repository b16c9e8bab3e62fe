//! Diagnostics of the `derive:` section of a spec.

use super::*;

#[test]
fn derive_section_diagnostics() {
    let base = "
version: 1
meshes:
  m: {shape: [2, 2], axes: [dp, tp]}
tensors: [{name: w, shape: [8, 8], dtype: f32}]
strategies: {s: {mesh: m, rules: [{match: w, dims: [tp, null]}]}}
";
    let cases = [
        (
            "derive: {tp_axes: [tp], dp_axes: [dp], pp_axis: pp}",
            "unknown_axis",
            (7, 49),
        ),
        (
            "derive: {tp_axes: [tp, dp], dp_axes: [dp]}",
            "axis_reused",
            (7, 39),
        ),
        ("derive: {tp_axes: [tp, tp]}", "axis_reused", (7, 24)),
        ("derive: {fallback: pad}", "bad_policy", (7, 20)),
        ("derive: {layer: \"layers.*\"}", "bad_stages", (7, 17)),
        ("derive: {ranges: [[0, 1], [3, 2]]}", "bad_stages", (7, 27)),
        ("derive: {shared: [\"\"]}", "bad_pattern", (7, 19)),
        ("derive: {replicate: [\"a{}\"]}", "bad_pattern", (7, 22)),
        ("derive: {tp: [tp]}", "unknown_field", (7, 10)),
        ("derive: {fallback: [chunk]}", "wrong_type", (7, 20)),
    ];
    for (section, want, at) in cases {
        let text = format!("{base}{section}\n");
        let (spec, diags) = parse_spec("x.yaml", &text);
        assert!(spec.is_none(), "{section}");
        let d = diags
            .iter()
            .find(|d| d.code.short() == want)
            .unwrap_or_else(|| panic!("{section}: {diags:?}"));
        assert_eq!((d.line, d.column), at, "{section}: {}", d.one_line());
        assert!(!d.help.is_empty());
    }
    // A valid section is read as written.
    let spec = parse(&format!(
        "{base}derive: {{tp_axes: [tp], dp_axes: [dp], fallback: chunk, layer: \"l.{{}}.*\", ranges: [[0, 3]], shared: [e], replicate: [\"*.b\"]}}\n"
    ));
    let r = spec.derive_rules().unwrap().clone();
    assert_eq!(
        (
            r.tp_axes,
            r.dp_axes,
            r.fallback,
            r.layer,
            r.ranges,
            r.shared,
            r.replicate
        ),
        (
            vec!["tp".to_string()],
            vec!["dp".to_string()],
            Fallback::Chunk,
            Some("l.{}.*".to_string()),
            Some(vec![[0, 3]]),
            vec![SharedTensors::everywhere("e")],
            vec!["*.b".to_string()]
        )
    );
    // Specs without the section keep working, without rules.
    assert!(parse(base).derive_rules().is_none());
}
