//! Each format's names of the tensor element types.

use crate::DType;

/// The element type a torch dtype names (`"bfloat16"`, the name after
/// `torch.`).
pub(crate) fn torch_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "float64" => DType::F64,
        "float32" => DType::F32,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" => DType::I64,
        "int32" => DType::I32,
        "int16" => DType::I16,
        "int8" => DType::I8,
        "uint64" => DType::U64,
        "uint32" => DType::U32,
        "uint16" => DType::U16,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// MindSpore tensor type names.
pub(crate) fn ms_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "Float64" => DType::F64,
        "Float32" => DType::F32,
        "Float16" => DType::F16,
        "BFloat16" => DType::BF16,
        "Int64" => DType::I64,
        "Int32" => DType::I32,
        "Int16" => DType::I16,
        "Int8" => DType::I8,
        "UInt64" => DType::U64,
        "UInt32" => DType::U32,
        "UInt16" => DType::U16,
        "UInt8" => DType::U8,
        "Bool" => DType::Bool,
        _ => return None,
    })
}

/// The MindSpore name of a dtype (`BFloat16`, `Float32`, ...).
pub(crate) fn ms_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "Float64",
        DType::F32 => "Float32",
        DType::F16 => "Float16",
        DType::BF16 => "BFloat16",
        DType::I64 => "Int64",
        DType::I32 => "Int32",
        DType::I16 => "Int16",
        DType::I8 => "Int8",
        DType::U64 => "UInt64",
        DType::U32 => "UInt32",
        DType::U16 => "UInt16",
        DType::U8 => "UInt8",
        DType::Bool => "Bool",
    }
}

/// The dtype a safetensors name (`BF16`, `F32`, ...) names.
pub(crate) fn st_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U64" => DType::U64,
        "U32" => DType::U32,
        "U16" => DType::U16,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// The safetensors name of a dtype (`BF16`, `F32`, ...).
pub(crate) fn st_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U64 => "U64",
        DType::U32 => "U32",
        DType::U16 => "U16",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
    }
}
