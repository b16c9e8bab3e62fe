//! The data files: each `.distcp` mapped once, its items told apart
//! (`torch.save` archive or safetensors), each chunk's bytes found in them.

use super::*;

/// The data files of the folder, each mapped once, and what they are.
pub(super) struct DataFiles<'a> {
    pub(super) dir: &'a Path,
    pub(super) meta_path: &'a Path,
    pub(super) files: BTreeMap<String, DataFile>,
}

pub(super) struct DataFile {
    pub(super) path: PathBuf,
    pub(super) map: memmap2::Mmap,
    pub(super) kind: ItemKind,
    /// The safetensors index, for safetensors files.
    pub(super) safetensors: Option<SafetensorsFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ItemKind {
    TorchSave,
    Safetensors,
}

pub(super) struct SafetensorsFile {
    pub(super) tensors: BTreeMap<String, TensorEntry>,
    /// `saved_offsets` per fqn, from `DCP_SHARDING_INFO`.
    pub(super) saved_offsets: HashMap<String, Vec<u64>>,
}

impl<'a> DataFiles<'a> {
    pub(super) fn new(dir: &'a Path, meta_path: &'a Path) -> Self {
        DataFiles {
            dir,
            meta_path,
            files: BTreeMap::new(),
        }
    }

    /// The checkpoint's format: that of all its data files.
    pub(super) fn format(&self) -> Result<SourceFormat, DcpError> {
        let mut kinds = self.files.values().map(|f| (f.kind, &f.path));
        let Some((first, _)) = kinds.next() else {
            return Ok(SourceFormat::DcpTorchSave);
        };
        if let Some((_, path)) = kinds.find(|(k, _)| *k != first) {
            return Err(DcpError::UnknownItem {
                file: path.clone(),
                reason: "the folder mixes torch.save and safetensors data files",
            });
        }
        Ok(match first {
            ItemKind::TorchSave => SourceFormat::DcpTorchSave,
            ItemKind::Safetensors => SourceFormat::DcpSafetensors,
        })
    }

    /// The tensor with the byte range of every chunk.
    pub(super) fn locate(
        &mut self,
        t: &TensorMeta,
        storage: &HashMap<(String, Vec<u64>), StorageInfo>,
    ) -> Result<StoredTensor, DcpError> {
        let mut chunks = Vec::with_capacity(t.chunks.len());
        for (offsets, sizes) in &t.chunks {
            self.check_inside(t, offsets, sizes)?;
            let info = storage
                .get(&(t.name.clone(), offsets.clone()))
                .ok_or_else(|| DcpError::MissingStorage {
                    file: self.meta_path.to_path_buf(),
                    tensor: t.name.clone(),
                    offsets: offsets.clone(),
                })?;
            chunks.push(self.chunk(t, offsets, sizes, info)?);
        }
        Ok(StoredTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            chunks,
        })
    }

    pub(super) fn check_inside(
        &self,
        t: &TensorMeta,
        offsets: &[u64],
        sizes: &[u64],
    ) -> Result<(), DcpError> {
        let fits = offsets.len() == t.shape.len()
            && sizes.len() == t.shape.len()
            && t.shape
                .iter()
                .zip(offsets.iter().zip(sizes))
                .all(|(&d, (&o, &s))| o.checked_add(s).is_some_and(|e| e <= d));
        if fits {
            return Ok(());
        }
        Err(DcpError::ChunkOutside {
            file: self.meta_path.to_path_buf(),
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
        })
    }

    /// Rank of each file: R of `__R_K.distcp` when every file is named so,
    /// else the file's place in name order.
    pub(super) fn ranks(&self) -> HashMap<PathBuf, u64> {
        let parsed: Option<Vec<u64>> = self.files.keys().map(|n| rank_of_name(n)).collect();
        match parsed {
            Some(ranks) => self
                .files
                .values()
                .zip(ranks)
                .map(|(f, r)| (f.path.clone(), r))
                .collect(),
            None => self
                .files
                .values()
                .zip(0u64..)
                .map(|(f, r)| (f.path.clone(), r))
                .collect(),
        }
    }

    pub(super) fn chunk(
        &mut self,
        t: &TensorMeta,
        offsets: &[u64],
        sizes: &[u64],
        info: &StorageInfo,
    ) -> Result<StoredChunk, DcpError> {
        let file = self.open(&t.name, &info.relative_path)?;
        let path = file.path.clone();
        let numel = sizes.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let expected_len = numel.and_then(|n| n.checked_mul(t.dtype.size_bytes()));
        let mismatch = |found: String, expected: String| DcpError::ItemMismatch {
            file: path.clone(),
            tensor: t.name.clone(),
            offsets: offsets.to_vec(),
            found,
            expected,
        };
        let expected = format!("{:?} {sizes:?}", t.dtype);
        let (dtype, shape, byte_offset, byte_len) = match file.kind {
            ItemKind::TorchSave => {
                let end = info.offset.checked_add(info.length);
                let len = file.map.len() as u64;
                let range = end.filter(|&e| e <= len).and_then(|e| {
                    file.map
                        .get(usize::try_from(info.offset).ok()?..usize::try_from(e).ok()?)
                });
                let Some(item) = range else {
                    return Err(DcpError::ShortFile {
                        file: path,
                        tensor: t.name.clone(),
                        start: info.offset.max(len),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    });
                };
                let what = format!("tensor {}, chunk at {offsets:?}", t.name);
                let item = read_torch_save_item(&path, info.offset, &what, item);
                release_pages(&file.map, info.offset, info.length);
                let item = item?;
                (
                    item.dtype,
                    item.shape,
                    info.offset + item.data_offset,
                    item.data_len,
                )
            }
            ItemKind::Safetensors => {
                let st = file.safetensors.as_ref();
                let entry = st
                    .and_then(|s| s.tensors.get(&t.name))
                    .ok_or_else(|| mismatch("no tensor of this name".into(), expected.clone()))?;
                let saved = st.and_then(|s| s.saved_offsets.get(&t.name));
                if saved.is_some_and(|s| s.as_slice() != offsets) {
                    return Err(mismatch(
                        format!("DCP_SHARDING_INFO saved_offsets {saved:?}"),
                        format!("offsets {offsets:?}"),
                    ));
                }
                // `_StorageInfo.offset` of this writer is not a file
                // offset (it is 0 for every item); the header says where
                // the bytes are, and the length must agree.
                if entry.len != info.length {
                    return Err(mismatch(
                        format!("{} bytes", entry.len),
                        format!("{} bytes (_StorageInfo.length)", info.length),
                    ));
                }
                (entry.dtype, entry.shape.clone(), entry.offset, entry.len)
            }
        };
        if dtype != t.dtype || shape.as_slice() != sizes || Some(byte_len) != expected_len {
            return Err(mismatch(
                format!("{dtype:?} {shape:?} ({byte_len} bytes)"),
                expected,
            ));
        }
        Ok(StoredChunk {
            rank: 0,
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            file: path,
            byte_offset,
            byte_len,
        })
    }

    /// The data file `relative_path`, mapped and classified on first use.
    pub(super) fn open(
        &mut self,
        tensor: &str,
        relative_path: &str,
    ) -> Result<&DataFile, DcpError> {
        let plain = {
            let mut parts = Path::new(relative_path).components();
            matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            )
        };
        if !plain {
            return Err(DcpError::RelativePath {
                file: self.meta_path.to_path_buf(),
                tensor: tensor.to_string(),
                path: relative_path.to_string(),
            });
        }
        if !self.files.contains_key(relative_path) {
            let path = self.dir.join(relative_path);
            let file = open_data_file(path)?;
            self.files.insert(relative_path.to_string(), file);
        }
        self.files
            .get(relative_path)
            .ok_or_else(|| DcpError::UnknownItem {
                file: self.dir.join(relative_path),
                reason: "the data file vanished from the index",
            })
    }
}

/// Unmaps the pages of one item once its records are read. Each read of
/// a header maps the page cache's whole folio around it (up to megabytes
/// for files read ahead), so indexing a 16 GB checkpoint of 2,328 items
/// otherwise peaked at 3 GB resident.
#[allow(unsafe_code)] // IO: see the SAFETY comment inside
pub(super) fn release_pages(map: &memmap2::Mmap, offset: u64, len: u64) {
    #[cfg(unix)]
    {
        let page = 4096u64;
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(map.len() as u64);
        if let (Ok(start), Ok(len)) = (
            usize::try_from(start),
            usize::try_from(end.saturating_sub(start)),
        ) {
            // SAFETY: the map is a read-only view of a file that no one
            // writes while it is read; dropping its pages only makes a
            // later access read them again from the page cache.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }
}

#[allow(unsafe_code)] // IO: see the SAFETY comment inside
pub(super) fn open_data_file(path: PathBuf) -> Result<DataFile, DcpError> {
    let f = File::open(&path).map_err(|e| io(&path, &e))?;
    // SAFETY: the map is read-only and private to this reader; a
    // concurrent truncation by another process could fault, the
    // documented hazard of memory-mapping (sources must not change while
    // they are read), as in `checkpoint::read_index`.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(&path, &e))?;
    let kind = if map.get(..4) == Some(b"PK\x03\x04".as_slice()) {
        ItemKind::TorchSave
    } else if map.get(8) == Some(&b'{') {
        ItemKind::Safetensors
    } else {
        return Err(DcpError::UnknownItem {
            file: path,
            reason: "the data file starts neither as a zip (torch.save) nor as safetensors",
        });
    };
    let safetensors = match kind {
        ItemKind::TorchSave => None,
        ItemKind::Safetensors => Some(read_safetensors(&path, &map)?),
    };
    Ok(DataFile {
        path,
        map,
        kind,
        safetensors,
    })
}

pub(super) fn read_safetensors(path: &Path, map: &[u8]) -> Result<SafetensorsFile, DcpError> {
    let index = parse_index(path, map, CheckpointFormat::Safetensors)?;
    Ok(SafetensorsFile {
        tensors: index.tensors,
        saved_offsets: sharding_info(map).unwrap_or_default(),
    })
}

/// `saved_offsets` per fqn from the header's `__metadata__`
/// `DCP_SHARDING_INFO` (a JSON string in the JSON header), when there.
/// `parse_index` has checked the header's bounds and JSON.
pub(super) fn sharding_info(map: &[u8]) -> Option<HashMap<String, Vec<u64>>> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?);
    let header = map.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let header: serde_json::Value = serde_json::from_slice(header).ok()?;
    let info = header
        .get("__metadata__")?
        .get("DCP_SHARDING_INFO")?
        .as_str()?;
    let info: serde_json::Value = serde_json::from_str(info).ok()?;
    let mut out = HashMap::new();
    for (fqn, v) in info.as_object()? {
        let offsets: Vec<u64> = serde_json::from_value(v.get("saved_offsets")?.clone()).ok()?;
        out.insert(fqn.clone(), offsets);
    }
    Some(out)
}

/// R of `__R_K.distcp`.
pub(super) fn rank_of_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("__")?.strip_suffix(".distcp")?;
    let (rank, index) = stem.split_once('_')?;
    index.parse::<u64>().ok()?;
    rank.parse().ok()
}
