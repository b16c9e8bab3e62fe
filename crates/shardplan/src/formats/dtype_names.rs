//! Each format's names of the tensor element types, in one table: a row
//! per [`DType`], a column per format. Every format reads and writes its
//! names through the functions below, so a dtype is spelled in one place.
//! (Specs name dtypes by [`DType::name`], the core's own table.)

use crate::DType;

/// One dtype's name in each format.
pub(crate) struct Names {
    /// MindSpore's tensor type in `.ckpt` files (`BFloat16`).
    pub(crate) mindspore: &'static str,
    /// safetensors' header name (`BF16`).
    pub(crate) safetensors: &'static str,
    /// The `torch` attribute (`torch.bfloat16`), in DCP metadata and
    /// `torch.save` archives.
    pub(crate) torch: &'static str,
    /// The legacy typed-storage class of `torch` (`BFloat16Storage`).
    pub(crate) torch_storage: &'static str,
    /// Whether `torch.save` pickles that class for the dtype (it has no
    /// legacy class for the wide unsigned types, which it stores untyped
    /// with the dtype; readers accept the class names all the same).
    pub(crate) storage_written: bool,
}

const fn row(
    mindspore: &'static str,
    safetensors: &'static str,
    torch: &'static str,
    torch_storage: &'static str,
    storage_written: bool,
) -> Names {
    Names {
        mindspore,
        safetensors,
        torch,
        torch_storage,
        storage_written,
    }
}

/// Every dtype's names, one row per [`DType`].
pub(crate) const DTYPE_NAMES: &[(DType, Names)] = &[
    (
        DType::F64,
        row("Float64", "F64", "float64", "DoubleStorage", true),
    ),
    (
        DType::F32,
        row("Float32", "F32", "float32", "FloatStorage", true),
    ),
    (
        DType::F16,
        row("Float16", "F16", "float16", "HalfStorage", true),
    ),
    (
        DType::BF16,
        row("BFloat16", "BF16", "bfloat16", "BFloat16Storage", true),
    ),
    (
        DType::I64,
        row("Int64", "I64", "int64", "LongStorage", true),
    ),
    (DType::I32, row("Int32", "I32", "int32", "IntStorage", true)),
    (
        DType::I16,
        row("Int16", "I16", "int16", "ShortStorage", true),
    ),
    (DType::I8, row("Int8", "I8", "int8", "CharStorage", true)),
    (
        DType::U64,
        row("UInt64", "U64", "uint64", "UInt64Storage", false),
    ),
    (
        DType::U32,
        row("UInt32", "U32", "uint32", "UInt32Storage", false),
    ),
    (
        DType::U16,
        row("UInt16", "U16", "uint16", "UInt16Storage", false),
    ),
    (DType::U8, row("UInt8", "U8", "uint8", "ByteStorage", true)),
    (
        DType::Bool,
        row("Bool", "BOOL", "bool", "BoolStorage", true),
    ),
];

/// The names of `d`.
fn names(d: DType) -> &'static Names {
    DTYPE_NAMES
        .iter()
        .find(|(t, _)| *t == d)
        .map(|(_, n)| n)
        .expect("every dtype has a row")
}

/// The dtype whose `column` is `name`.
fn named(name: &str, column: impl Fn(&Names) -> &'static str) -> Option<DType> {
    DTYPE_NAMES
        .iter()
        .find(|(_, n)| column(n) == name)
        .map(|&(d, _)| d)
}

/// The dtype a MindSpore tensor type (`BFloat16`, `Float32`, ...) names.
pub(crate) fn ms_dtype(name: &str) -> Option<DType> {
    named(name, |n| n.mindspore)
}

/// The MindSpore name of a dtype (`BFloat16`, `Float32`, ...).
pub(crate) fn ms_dtype_name(d: DType) -> &'static str {
    names(d).mindspore
}

/// The dtype a safetensors name (`BF16`, `F32`, ...) names.
pub(crate) fn st_dtype(name: &str) -> Option<DType> {
    named(name, |n| n.safetensors)
}

/// The safetensors name of a dtype (`BF16`, `F32`, ...).
pub(crate) fn st_dtype_name(d: DType) -> &'static str {
    names(d).safetensors
}

/// The element type a torch dtype names (`"bfloat16"`, the name after
/// `torch.`).
pub(crate) fn torch_dtype(name: &str) -> Option<DType> {
    named(name, |n| n.torch)
}

/// The name of the `torch` attribute for `dtype` (`torch.bfloat16`).
pub(crate) fn torch_dtype_name(d: DType) -> &'static str {
    names(d).torch
}

/// The dtype of a typed storage class of `torch`.
pub(crate) fn storage_dtype(name: &str) -> Option<DType> {
    named(name, |n| n.torch_storage)
}

/// The legacy typed-storage class `torch.save` pickles for a storage of
/// `dtype`, where one exists.
pub(crate) fn storage_type(d: DType) -> Option<&'static str> {
    let n = names(d);
    n.storage_written.then_some(n.torch_storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::torch::pickle::{DCP_METADATA_GLOBALS, TORCH_SAVE_GLOBALS};

    /// One row per dtype, and every column's names distinct, so each
    /// lookup goes both ways.
    #[test]
    fn one_row_per_dtype_and_names_go_both_ways() {
        assert_eq!(DTYPE_NAMES.len(), DType::ALL.len());
        for d in DType::ALL {
            assert_eq!(ms_dtype(ms_dtype_name(d)), Some(d));
            assert_eq!(st_dtype(st_dtype_name(d)), Some(d));
            assert_eq!(torch_dtype(torch_dtype_name(d)), Some(d));
            assert_eq!(storage_dtype(names(d).torch_storage), Some(d));
            if let Some(class) = storage_type(d) {
                assert_eq!(storage_dtype(class), Some(d));
            }
        }
        assert_eq!(ms_dtype("Float8"), None);
        assert_eq!(st_dtype("bf16"), None);
        assert_eq!(torch_dtype("complex64"), None);
    }

    /// The pickle allow-lists name every torch dtype and storage class the
    /// table has, so the readers can decode what the table maps.
    #[test]
    fn allow_lists_name_every_torch_name() {
        let allowed = |list: &[crate::formats::torch::pickle::AllowedGlobal], name: &str| {
            list.iter().any(|g| g.module == "torch" && g.name == name)
        };
        for (_, n) in DTYPE_NAMES {
            assert!(allowed(DCP_METADATA_GLOBALS, n.torch), "{}", n.torch);
            assert!(
                allowed(TORCH_SAVE_GLOBALS, n.torch_storage),
                "{}",
                n.torch_storage
            );
        }
    }
}
