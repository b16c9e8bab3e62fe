//! The DCP `.metadata` pickle: `torch.distributed.checkpoint.metadata.Metadata`
//! built opcode by opcode the way `pickle.dumps(protocol=4)` builds it in
//! the files torch writes. Dataclasses are `NEWOBJ` of the class with no
//! arguments, then `BUILD` with their `__dict__`; `TensorProperties` is
//! `BUILD` with the 6-tuple its `__setstate__` takes; `torch.Size` is
//! `REDUCE` of a tuple of ints.

use crate::DType;
use crate::formats::dtype_names::torch_dtype_name;
use crate::formats::torch::pickle::write::{Pickler, Protocol};

const METADATA: &str = "torch.distributed.checkpoint.metadata";
const FILESYSTEM: &str = "torch.distributed.checkpoint.filesystem";

/// One tensor of `state_dict_metadata`.
#[derive(Debug)]
pub(crate) struct MetaTensor<'a> {
    pub fqn: &'a str,
    pub dtype: DType,
    pub shape: &'a [u64],
    /// `TensorProperties.strides`: torch records the local tensor's strides
    /// of the chunk that first reached the metadata.
    pub strides: Vec<u64>,
    /// `(offsets, sizes)` of each chunk, in the order `MetadataIndex.index`
    /// counts them.
    pub chunks: Vec<(&'a [u64], &'a [u64])>,
}

/// One entry of `storage_data`: the chunk `index` of `fqn`, at `offsets`,
/// stored in `relative_path` at `offset` for `length` bytes.
#[derive(Debug)]
pub(crate) struct MetaStorage<'a> {
    pub fqn: &'a str,
    pub offsets: &'a [u64],
    pub index: u64,
    pub relative_path: &'a str,
    pub offset: u64,
    pub length: u64,
}

/// `Metadata(state_dict_metadata, planner_data, storage_data, storage_meta,
/// version="1.0.0")`. `planner_data` maps each name to the one-element path
/// `(name,)`, what DCP's flattening records for a flat state dict and what
/// `dcp_to_torch_save` uses to rebuild it. `storage_meta` is a
/// `StorageMeta` with no checkpoint or save id, so the bytes depend on the
/// layout alone.
pub(crate) fn metadata_pickle(
    tensors: &[MetaTensor<'_>],
    planner_order: &[&str],
    storage: &[MetaStorage<'_>],
) -> Vec<u8> {
    let mut e = Emitter {
        p: Pickler::new(Protocol::Four),
        layout: None,
        contiguous: None,
    };
    e.new_object(METADATA, "Metadata");
    e.p.empty_dict();
    e.p.mark();

    e.p.str("state_dict_metadata");
    e.p.empty_dict();
    e.p.mark();
    for t in tensors {
        e.p.str(t.fqn);
        e.tensor_storage_metadata(t);
    }
    e.p.setitems();

    e.p.str("planner_data");
    e.p.empty_dict();
    e.p.mark();
    for fqn in planner_order {
        e.p.str(fqn);
        e.p.str(fqn);
        e.p.tuple(1);
    }
    e.p.setitems();

    e.p.str("storage_data");
    e.p.empty_dict();
    e.p.mark();
    for s in storage {
        e.metadata_index(s);
        e.storage_info(s);
    }
    e.p.setitems();

    e.p.str("storage_meta");
    e.storage_meta();
    e.p.str("version");
    e.p.str("1.0.0");
    e.p.setitems();
    e.p.build();
    e.p.finish()
}

struct Emitter {
    p: Pickler,
    /// Memo slots of `torch.strided` and `_MEM_FORMAT_ENCODING(0)`, shared by
    /// every `TensorProperties` as in the files torch writes.
    layout: Option<u32>,
    contiguous: Option<u32>,
}

impl Emitter {
    /// `cls.__new__(cls)`, ready for `BUILD`.
    fn new_object(&mut self, module: &str, class: &str) {
        self.p.global(module, class);
        self.p.tuple(0);
        self.p.newobj();
    }

    /// `torch.Size(dims)`.
    fn torch_size(&mut self, dims: &[u64]) {
        self.p.global("torch", "Size");
        self.p.int_tuple(dims);
        self.p.tuple(1);
        self.p.reduce();
    }

    fn tensor_storage_metadata(&mut self, t: &MetaTensor<'_>) {
        self.new_object(METADATA, "TensorStorageMetadata");
        self.p.empty_dict();
        self.p.mark();
        self.p.str("properties");
        self.tensor_properties(t.dtype, &t.strides);
        self.p.str("size");
        self.torch_size(t.shape);
        self.p.str("chunks");
        self.p.empty_list();
        self.p.mark();
        for (offsets, sizes) in &t.chunks {
            self.new_object(METADATA, "ChunkStorageMetadata");
            self.p.empty_dict();
            self.p.mark();
            self.p.str("offsets");
            self.torch_size(offsets);
            self.p.str("sizes");
            self.torch_size(sizes);
            self.p.setitems();
            self.p.build();
        }
        self.p.appends();
        self.p.setitems();
        self.p.build();
    }

    /// `TensorProperties` through its `__setstate__`: `(dtype, layout,
    /// requires_grad, memory format encoding, pin_memory, strides)`.
    fn tensor_properties(&mut self, dtype: DType, strides: &[u64]) {
        self.new_object(METADATA, "TensorProperties");
        self.p.mark();
        self.p.global("torch", torch_dtype_name(dtype));
        match self.layout {
            Some(idx) => self.p.get(idx),
            None => {
                // torch.layout does not pickle; torch stores its name.
                self.p.global("torch.serialization", "_get_layout");
                self.p.str("torch.strided");
                self.p.tuple(1);
                self.p.reduce();
                self.layout = Some(self.p.memoize());
            }
        }
        self.p.bool(false);
        match self.contiguous {
            Some(idx) => self.p.get(idx),
            None => {
                // Nor does torch.memory_format: DCP stores an enum member.
                self.p.global(METADATA, "_MEM_FORMAT_ENCODING");
                self.p.int(0);
                self.p.tuple(1);
                self.p.reduce();
                self.contiguous = Some(self.p.memoize());
            }
        }
        self.p.bool(false);
        self.p.int_tuple(strides);
        self.p.tuple_from_mark();
        self.p.build();
    }

    fn metadata_index(&mut self, s: &MetaStorage<'_>) {
        // Frozen dataclass: BUILD writes its __dict__ directly, the order
        // its __init__ sets the fields.
        self.new_object(METADATA, "MetadataIndex");
        self.p.empty_dict();
        self.p.mark();
        self.p.str("fqn");
        self.p.str(s.fqn);
        self.p.str("index");
        self.p.int(s.index);
        self.p.str("offset");
        self.torch_size(s.offsets);
        self.p.setitems();
        self.p.build();
    }

    fn storage_info(&mut self, s: &MetaStorage<'_>) {
        // `_StorageInfo.__getstate__` leaves out `transform_descriptors`
        // when it is None; the class default reads back as None.
        self.new_object(FILESYSTEM, "_StorageInfo");
        self.p.empty_dict();
        self.p.mark();
        self.p.str("relative_path");
        self.p.str(s.relative_path);
        self.p.str("offset");
        self.p.int(s.offset);
        self.p.str("length");
        self.p.int(s.length);
        self.p.setitems();
        self.p.build();
    }

    fn storage_meta(&mut self) {
        self.new_object(METADATA, "StorageMeta");
        self.p.empty_dict();
        self.p.mark();
        for field in ["checkpoint_id", "save_id", "load_id"] {
            self.p.str(field);
            self.p.none();
        }
        self.p.str("modules");
        self.p.empty_list();
        self.p.setitems();
        self.p.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_globals_are_the_ones_torch_writes() {
        let tensors = [MetaTensor {
            fqn: "w",
            dtype: DType::BF16,
            shape: &[4, 2],
            strides: vec![2, 1],
            chunks: vec![(&[0, 0], &[4, 2])],
        }];
        let storage = [MetaStorage {
            fqn: "w",
            offsets: &[0, 0],
            index: 0,
            relative_path: "__0_0.distcp",
            offset: 0,
            length: 1000,
        }];
        let bytes = metadata_pickle(&tensors, &["w"], &storage);
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "torch.distributed.checkpoint.metadata",
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "_MEM_FORMAT_ENCODING",
            "ChunkStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
            "torch.distributed.checkpoint.filesystem",
            "_StorageInfo",
            "torch.serialization",
            "_get_layout",
            "torch.strided",
            "bfloat16",
            "Size",
        ] {
            assert!(text.contains(name), "{name}");
        }
        assert_eq!(&bytes[..3], [0x80, 4, 0x95]);
        assert_eq!(*bytes.last().unwrap(), b'.');
        assert_eq!(bytes, metadata_pickle(&tensors, &["w"], &storage));
    }
}
