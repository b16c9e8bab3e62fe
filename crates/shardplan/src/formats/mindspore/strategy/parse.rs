//! Reading strategy files: the JSON form and the protobuf
//! `ParallelStrategyMap`, one file per stage or merged.

use super::*;

#[derive(serde::Deserialize, serde::Serialize)]
pub(super) struct JsonFile {
    #[serde(default)]
    pub(super) current_stage: u64,
    #[serde(default)]
    pub(super) parallel_strategy_item: serde_json::Map<String, serde_json::Value>,
    pub(super) parallel_layout_item: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Deserialize, serde::Serialize)]
pub(super) struct JsonLayout {
    pub(super) dev_matrix: Vec<u64>,
    pub(super) tensor_map: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tensor_shape: Option<Vec<u64>>,
    #[serde(default)]
    pub(super) field: i64,
    #[serde(default)]
    pub(super) opt_weight_shard_step: i64,
    #[serde(default)]
    pub(super) opt_weight_shard_size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) param_split_shape: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) indices_offset: Vec<u64>,
}

/// Splits a merged-form name `"<stage>-<name>"`.
pub(super) fn stage_prefix(name: &str) -> Option<(u64, &str)> {
    let (head, rest) = name.split_once('-')?;
    if head.is_empty() || !head.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    Some((head.parse().ok()?, rest))
}

/// Reads one strategy file (JSON or protobuf, told apart by content).
///
/// A file is in the merged form when every parameter name carries a
/// `"<stage>-"` prefix; then the prefix gives the stage and is stripped
/// (only the first `-` is split on, so names containing `-` survive).
/// Otherwise every parameter is on the file's `current_stage`.
///
/// # Errors
///
/// [`StrategyFileError`] naming `file`, with its [`StrategyFileFault`]:
/// [`NotAStrategy`](StrategyFileFault::NotAStrategy) for a file that is
/// neither; [`Json`](StrategyFileFault::Json) for JSON with a syntax error
/// or a missing top-level field (line and column named);
/// [`MalformedLayout`](StrategyFileFault::MalformedLayout) and
/// [`TensorMapEntry`](StrategyFileFault::TensorMapEntry) for a layout with
/// a malformed field; [`EmptyName`](StrategyFileFault::EmptyName);
/// [`ListedTwice`](StrategyFileFault::ListedTwice) and
/// [`DifferentLayouts`](StrategyFileFault::DifferentLayouts) for a
/// parameter listed twice for one stage, or on two with different layouts.
pub fn parse_strategy_file(file: &str, bytes: &[u8]) -> Result<StrategyFile, StrategyFileError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let (current, raw): (u64, Vec<(String, ParamEntry)>) = if first == Some(&b'{') {
        parse_json(file, bytes)?
    } else {
        parse_pb(file, bytes)?
    };
    let merged = !raw.is_empty() && raw.iter().all(|(n, _)| stage_prefix(n).is_some());
    let mut params: Vec<ParamEntry> = Vec::with_capacity(raw.len());
    for (name, mut p) in raw {
        if merged {
            let (stage, bare) = stage_prefix(&name).expect("checked");
            p.stage = stage;
            p.name = bare.to_string();
        } else {
            p.stage = current;
            p.name = name;
        }
        if p.name.is_empty() {
            return Err(StrategyFileFault::EmptyName.of(file));
        }
        add_param(&mut params, p).map_err(|c| c.in_one_file().of(file))?;
    }
    // Stage numbers come from the file: a huge one must fail later, when
    // its mesh is built, not overflow here.
    let stage_count = params
        .iter()
        .map(|p| {
            p.also_on
                .last()
                .copied()
                .unwrap_or(p.stage)
                .saturating_add(1)
        })
        .max()
        .unwrap_or(1)
        .max(current.saturating_add(1));
    Ok(StrategyFile {
        params,
        stage_count,
    })
}

/// Why [`add_param`] refused an entry: the fault of one file, or of the
/// files read together.
pub(super) enum Clash {
    /// Listed twice for one stage.
    Twice { parameter: String, stage: u64 },
    /// On two stages with different layouts.
    Differ {
        parameter: String,
        first: u64,
        second: u64,
    },
}

impl Clash {
    fn in_one_file(self) -> StrategyFileFault {
        match self {
            Clash::Twice { parameter, stage } => {
                StrategyFileFault::ListedTwice { parameter, stage }
            }
            Clash::Differ {
                parameter,
                first,
                second,
            } => StrategyFileFault::DifferentLayouts {
                parameter,
                first,
                second,
            },
        }
    }

    fn across_files(self) -> StrategyFileFault {
        match self {
            Clash::Twice { parameter, stage } => {
                StrategyFileFault::ListedTwiceAcrossFiles { parameter, stage }
            }
            Clash::Differ {
                parameter,
                first,
                second,
            } => StrategyFileFault::DifferentLayoutsAcrossFiles {
                parameter,
                first,
                second,
            },
        }
    }
}

/// Adds `p` to `params`, or, when the parameter is already there for
/// another stage with the same layout, records the stage on that entry.
///
/// # Errors
///
/// [`Clash`] when the parameter is listed twice for one stage, or on two
/// stages with different layouts.
pub(super) fn add_param(params: &mut Vec<ParamEntry>, p: ParamEntry) -> Result<(), Clash> {
    let Some(old) = params.iter_mut().find(|q| q.name == p.name) else {
        params.push(p);
        return Ok(());
    };
    if old.stage == p.stage || old.also_on.contains(&p.stage) {
        return Err(Clash::Twice {
            parameter: p.name,
            stage: p.stage,
        });
    }
    let same_cut = old.dev_matrix == p.dev_matrix
        && old.tensor_map == p.tensor_map
        && old.opt_weight_shard_size == p.opt_weight_shard_size
        && old.opt_weight_shard_step == p.opt_weight_shard_step
        && old.param_split_shape == p.param_split_shape
        && (old.shape.is_none() || p.shape.is_none() || old.shape == p.shape);
    if !same_cut {
        return Err(Clash::Differ {
            parameter: p.name,
            first: old.stage,
            second: p.stage,
        });
    }
    old.shape = old.shape.take().or(p.shape);
    // Keep the lowest stage first and the others ascending.
    let mut all: Vec<u64> = std::iter::once(old.stage)
        .chain(old.also_on.iter().copied())
        .chain([p.stage])
        .collect();
    all.sort_unstable();
    old.stage = all[0];
    old.also_on = all[1..].to_vec();
    Ok(())
}

pub(super) type Parsed = (u64, Vec<(String, ParamEntry)>);

pub(super) fn parse_json(file: &str, bytes: &[u8]) -> Result<Parsed, StrategyFileError> {
    let doc: JsonFile = serde_json::from_slice(bytes).map_err(|source| {
        StrategyFileFault::Json {
            line: source.line(),
            column: source.column(),
            source,
        }
        .of(file)
    })?;
    let mut out = Vec::new();
    for (name, v) in doc.parallel_layout_item {
        let l: JsonLayout = serde_json::from_value(v).map_err(|source| {
            StrategyFileFault::MalformedLayout {
                parameter: name.clone(),
                source,
            }
            .of(file)
        })?;
        let mut flat = Vec::with_capacity(l.tensor_map.len());
        for e in &l.tensor_map {
            match e.as_i64() {
                Some(k) => flat.push(k),
                None => {
                    return Err(StrategyFileFault::TensorMapEntry {
                        parameter: name,
                        entry: Box::new(e.clone()),
                    }
                    .of(file));
                }
            }
        }
        out.push((
            name.clone(),
            ParamEntry {
                name,
                stage: 0,
                also_on: Vec::new(),
                dev_matrix: l.dev_matrix,
                tensor_map: vec![flat],
                shape: l.tensor_shape,
                opt_weight_shard_size: l.opt_weight_shard_size,
                opt_weight_shard_step: l.opt_weight_shard_step,
                param_split_shape: l.param_split_shape,
            },
        ));
    }
    Ok((doc.current_stage, out))
}

pub(super) fn parse_pb(file: &str, bytes: &[u8]) -> Result<Parsed, StrategyFileError> {
    let map = pb::ParallelStrategyMap::decode(bytes)
        .map_err(|e| StrategyFileFault::NotAStrategy(e).of(file))?;
    let mut out = Vec::new();
    for item in map.parallel_layout_item {
        let l = item.parallel_layouts;
        let dev: Vec<u64> = l
            .dev_matrix
            .iter()
            .flat_map(|d| d.dim.iter().map(|&x| u64::from(x)))
            .collect();
        let split: Vec<u64> = l
            .param_split_shape
            .iter()
            .flat_map(|d| d.dim.iter().copied())
            .map(|x| u64::try_from(x).unwrap_or(0))
            .collect();
        out.push((
            item.param_name.clone(),
            ParamEntry {
                name: item.param_name,
                stage: 0,
                also_on: Vec::new(),
                dev_matrix: dev,
                tensor_map: l
                    .tensor_map
                    .iter()
                    .map(|t| t.dim.iter().map(|&x| i64::from(x)).collect())
                    .collect(),
                shape: None,
                opt_weight_shard_size: i64::from(l.opt_weight_shard_size),
                opt_weight_shard_step: i64::from(l.opt_weight_shard_step),
                param_split_shape: split,
            },
        ));
    }
    Ok((u64::from(map.current_stage), out))
}

/// Reads several files (per-stage files, or one merged file) as one
/// strategy.
///
/// # Errors
///
/// [`StrategyFileError`] naming the file: [`StrategyFileFault::Read`] for a
/// file that cannot be read, the faults of [`parse_strategy_file`], and
/// [`ListedTwiceAcrossFiles`](StrategyFileFault::ListedTwiceAcrossFiles) or
/// [`DifferentLayoutsAcrossFiles`](StrategyFileFault::DifferentLayoutsAcrossFiles)
/// for a parameter in two files.
pub fn read_strategy_files(paths: &[&Path]) -> Result<StrategyFile, StrategyFileError> {
    let mut all = StrategyFile {
        params: Vec::new(),
        stage_count: 1,
    };
    for path in paths {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| StrategyFileFault::Read(e).of(&name))?;
        let f = parse_strategy_file(&name, &bytes)?;
        all.stage_count = all.stage_count.max(f.stage_count);
        for p in f.params {
            // Stages one by one: a parameter on several stages is in
            // several files.
            for one in p.per_stage() {
                add_param(&mut all.params, one).map_err(|c| c.across_files().of(&name))?;
            }
        }
    }
    Ok(all)
}
