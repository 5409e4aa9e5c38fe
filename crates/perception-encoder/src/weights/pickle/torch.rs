//! What the unpickler knows of PyTorch: the globals a weights-only state dict refers to
//! (storages, `_rebuild_tensor_v2`, `_rebuild_parameter`, `OrderedDict`), how each is called,
//! and persistent ids naming storages. Everything else is refused by name.

use super::Value;
use crate::weights::storage::StorageDType;

/// A tensor as the pickle describes it: a view into a storage entry of the archive.
#[derive(Debug, Clone)]
pub(crate) struct PickledTensor {
    pub storage_key: String,
    pub dtype: StorageDType,
    /// Elements in the whole storage.
    pub storage_numel: usize,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A global the unpickler allows: the few a weights-only state dict refers to.
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageDType),
    IntegerStorage(&'static str),
}

/// The allowed global `module.name`, or an error naming it.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::Storage(StorageDType::F32),
        ("torch", "HalfStorage") => Global::Storage(StorageDType::F16),
        ("torch", "BFloat16Storage") => Global::Storage(StorageDType::BF16),
        ("torch", "DoubleStorage") => Global::Storage(StorageDType::F64),
        ("torch", "LongStorage") => Global::IntegerStorage("int64"),
        ("torch", "IntStorage") => Global::IntegerStorage("int32"),
        ("torch", "ShortStorage") => Global::IntegerStorage("int16"),
        ("torch", "CharStorage") => Global::IntegerStorage("int8"),
        ("torch", "ByteStorage") => Global::IntegerStorage("uint8"),
        ("torch", "BoolStorage") => Global::IntegerStorage("bool"),
        _ => {
            return Err(format!(
                "the pickle refers to `{module}.{name}`, which a weights-only state dict never contains \
                 (only tensors, dicts, lists and plain values are read)"
            ))
        }
    })
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(format!("{what} is not a non-negative integer: {v:?}")),
    }
}

fn as_usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(xs) | Value::List(xs) => xs.iter().map(|x| as_usize(x, what)).collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

/// Call an allowed global (`REDUCE`): rebuild a tensor, a parameter or an empty dict.
pub(crate) fn call(func: Global, args: Value) -> Result<Value, String> {
    let args = match args {
        Value::Tuple(a) => a,
        other => return Err(format!("call arguments are not a tuple: {other:?}")),
    };
    match func {
        Global::OrderedDict => match args.as_slice() {
            [] => Ok(Value::Dict(Vec::new())),
            [Value::List(items)] if items.is_empty() => Ok(Value::Dict(Vec::new())),
            _ => Err("OrderedDict called with arguments".into()),
        },
        Global::RebuildTensorV2 => {
            if args.len() < 4 {
                return Err("_rebuild_tensor_v2 with too few arguments".into());
            }
            let (dtype, key, numel) = match &args[0] {
                Value::Storage { dtype, key, numel } => (*dtype, key.clone(), *numel),
                Value::IntegerStorage(kind) => return Ok(Value::IntegerTensor(kind)),
                other => return Err(format!("_rebuild_tensor_v2 on a non-storage: {other:?}")),
            };
            let offset = as_usize(&args[1], "storage offset")?;
            let shape = as_usize_tuple(&args[2], "tensor size")?;
            let stride = as_usize_tuple(&args[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return Err("tensor size and stride differ in length".into());
            }
            Ok(Value::Tensor(PickledTensor { storage_key: key, dtype, storage_numel: numel, offset, shape, stride }))
        }
        Global::RebuildParameter => match args.into_iter().next() {
            Some(t @ (Value::Tensor(_) | Value::IntegerTensor(_))) => Ok(t),
            _ => Err("_rebuild_parameter without a tensor".into()),
        },
        Global::Storage(_) | Global::IntegerStorage(_) => Err("a storage class cannot be called".into()),
    }
}

/// A persistent id (`BINPERSID`): PyTorch's reference to a storage entry of the archive.
pub(crate) fn persistent_load(pid: Value) -> Result<Value, String> {
    let parts = match pid {
        Value::Tuple(p) => p,
        other => return Err(format!("unexpected persistent id {other:?}")),
    };
    match parts.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(dtype)), key, _location, numel] if tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => return Err(format!("storage key {other:?}")),
            };
            Ok(Value::Storage { dtype: *dtype, key, numel: as_usize(numel, "storage size")? })
        }
        [Value::Str(tag), Value::Global(Global::IntegerStorage(kind)), ..] if tag == "storage" => {
            Ok(Value::IntegerStorage(kind))
        }
        _ => Err(format!("unsupported persistent id {parts:?}")),
    }
}
