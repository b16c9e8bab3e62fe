use super::*;

fn chunk(fqn: &str, dtype: DType, shape: &[u64], offsets: &[u64], sizes: &[u64]) -> DcpChunkOut {
    DcpChunkOut {
        fqn: fqn.to_string(),
        dtype,
        shape: shape.to_vec(),
        offsets: offsets.to_vec(),
        sizes: sizes.to_vec(),
    }
}

/// Row shards of a `[rows, 4]` f32 tensor, one per rank, `sizes` rows each.
fn rows(fqn: &str, sizes: &[u64]) -> Vec<DcpChunkOut> {
    let total: u64 = sizes.iter().sum();
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let c = chunk(fqn, DType::F32, &[total, 4], &[at, 0], &[n, 4]);
            at += n;
            c
        })
        .collect()
}

#[track_caller]
fn check_err(ranks: Vec<Vec<DcpChunkOut>>, code: &str) {
    use miette::Diagnostic;
    let err = DcpLayout::new(ranks).expect_err("the layout is refused");
    let got = err.code().map(|c| c.to_string()).unwrap_or_default();
    assert_eq!(
        got,
        format!("shardplan::formats::dcp_write::{code}"),
        "{err}"
    );
}

#[test]
fn items_are_laid_end_to_end_per_rank() {
    let w = rows("w", &[3, 2]);
    let b = rows("b", &[1, 1]);
    let ranks = vec![
        vec![w[0].clone(), b[0].clone()],
        vec![w[1].clone(), b[1].clone()],
    ];
    let layout = DcpLayout::new(ranks).unwrap();
    let names: Vec<&str> = layout.files().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["__0_0.distcp", "__1_0.distcp"]);
    for f in layout.files() {
        let mut at = 0;
        for item in &f.items {
            assert_eq!(item.offset, at);
            assert_eq!(item.data_offset(), at + item.archive.data_offset());
            at += item.archive.len();
        }
        assert_eq!(f.len, at);
    }
    let f0 = &layout.files()[0];
    assert_eq!(f0.items[0].archive.data_len(), 3 * 4 * 4);
    assert_eq!(f0.items[1].source, (0, 1));
}

#[test]
fn replicas_are_stored_once_by_the_lowest_rank() {
    let norm = chunk("norm", DType::F32, &[8], &[0], &[8]);
    let step = chunk("step", DType::I64, &[], &[], &[]);
    let w = rows("w", &[2, 2]);
    let ranks = vec![
        vec![w[0].clone()],
        vec![w[1].clone(), norm.clone(), step.clone()],
        vec![w[0].clone(), norm.clone(), step.clone()],
        vec![w[1].clone(), step.clone()],
    ];
    let layout = DcpLayout::new(ranks).unwrap();
    let held: Vec<Vec<(&str, usize)>> = layout
        .files()
        .iter()
        .map(|f| {
            f.items
                .iter()
                .map(|i| (i.chunk.fqn.as_str(), i.source.1))
                .collect()
        })
        .collect();
    assert_eq!(
        held,
        [
            vec![("w", 0)],
            vec![("w", 0), ("norm", 1), ("step", 2)],
            vec![],
            vec![]
        ]
    );
    // Ranks with nothing left still get their (empty) file, as DCP writes.
    assert_eq!(layout.files()[3].len, 0);
    assert_eq!(layout.files()[1].items[2].archive.data_len(), 8);
}

#[test]
fn the_same_input_gives_the_same_metadata() {
    let make = || {
        let w = rows("w", &[13, 13, 13, 11]);
        DcpLayout::new(w.into_iter().map(|c| vec![c]).collect()).unwrap()
    };
    assert_eq!(make().metadata_bytes(), make().metadata_bytes());
    assert_eq!(make(), make());
}

#[test]
fn chunks_that_do_not_tile_are_refused() {
    let w = rows("w", &[2, 2]);
    check_err(vec![vec![w[0].clone()]], "incomplete");
    let mut shifted = w[1].clone();
    shifted.offsets[0] = 1;
    check_err(vec![vec![w[0].clone()], vec![shifted]], "overlap");
    // The same box but a different extent is not a replica.
    let mut longer = w[0].clone();
    longer.sizes[0] = 3;
    check_err(vec![vec![w[0].clone()], vec![longer]], "overlap");
    // The same box twice on one rank.
    check_err(
        vec![vec![w[0].clone(), w[0].clone(), w[1].clone()]],
        "overlap",
    );
}

#[test]
fn malformed_chunks_are_refused() {
    let w = rows("w", &[2, 2]);
    let mut bad = w[1].clone();
    bad.sizes.pop();
    check_err(vec![vec![w[0].clone()], vec![bad]], "chunk_dims");
    let mut outside = w[1].clone();
    outside.offsets[0] = 3;
    check_err(vec![vec![w[0].clone()], vec![outside]], "out_of_bounds");
    let mut far = w[1].clone();
    far.offsets[0] = u64::MAX;
    check_err(vec![vec![far]], "out_of_bounds");
    let mut other = w[1].clone();
    other.dtype = DType::BF16;
    check_err(vec![vec![w[0].clone()], vec![other]], "inconsistent_tensor");
    let huge = chunk("h", DType::F64, &[1 << 62], &[0], &[1 << 62]);
    check_err(vec![vec![huge]], "size_overflow");
}

#[test]
fn empty_chunks_are_stored_and_do_not_overlap() {
    // 2 rows over 3 ranks: the last rank holds an empty box at the end.
    let ranks = vec![
        vec![chunk("w", DType::F16, &[2, 4], &[0, 0], &[1, 4])],
        vec![chunk("w", DType::F16, &[2, 4], &[1, 0], &[1, 4])],
        vec![chunk("w", DType::F16, &[2, 4], &[2, 0], &[0, 4])],
    ];
    let layout = DcpLayout::new(ranks).unwrap();
    assert_eq!(layout.files()[2].items[0].archive.data_len(), 0);
}

#[test]
fn folder_writes_check_the_byte_lengths() {
    let dir = std::env::temp_dir().join(format!("shardplan-dcp-len-{}", std::process::id()));
    let data = DcpChunkData {
        chunk: chunk("b", DType::I32, &[3], &[0], &[3]),
        bytes: vec![0; 11],
    };
    let err = write_dcp_folder(&dir, vec![vec![data]]).unwrap_err();
    assert!(
        matches!(
            err,
            DcpWriteError::DataLength {
                expected: 12,
                got: 11,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.exists(), "nothing is written before the checks pass");
}
