//! The candle `VarBuilder` backends the towers load through: a checkpoint read lazily from its
//! memory map (answering transposed reads of 2-D weights), and an in-memory tensor map whose
//! entries are handed over as they are taken.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};

use super::Checkpoint;
use crate::error::Error;

/// `t` if it has shape `s`, else the loader's shape-mismatch message for `name`.
pub(crate) fn with_shape(t: Tensor, s: &Shape, name: &str) -> candle_core::Result<Tensor> {
    if t.shape() != s {
        return Err(candle_core::Error::Msg(format!(
            "shape mismatch for `{name}`: the model expects {:?}, the weights have {:?}",
            s.dims(),
            t.dims()
        )));
    }
    Ok(t)
}

/// A checkpoint as a `VarBuilder` backend.
pub(crate) struct Backend(pub(crate) Checkpoint);

/// A checkpoint [`VarBuilder`] also answers `"{key}@T"`: the 2-D tensor `key` transposed,
/// read that way from the file (other backends do not, and callers fall back to `key`).
pub(crate) const TRANSPOSED: &str = "@T";

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        with_shape(self.get_unchecked(name, dtype, dev)?, &s, name)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = match name.strip_suffix(TRANSPOSED) {
            Some(key) if dtype == DType::F32 && dev.is_cpu() => self.0.tensor_transposed(key),
            Some(key) => self.0.tensor(key, dtype, dev).and_then(|t| Ok(t.t()?.contiguous()?)),
            None => self.0.tensor(name, dtype, dev),
        };
        t.map_err(|e| match e {
            Error::Tensor(t) => t,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match name.strip_suffix(TRANSPOSED) {
            Some(key) => self.0.entries.get(key).is_some_and(|e| e.shape().len() == 2),
            None => self.0.entries.contains_key(name),
        }
    }
}

/// A tensor map whose entries are removed as they are read.
pub(crate) struct TakeTensors(Mutex<HashMap<String, Tensor>>);

impl TakeTensors {
    /// The map of `(official key, tensor)` pairs.
    pub(crate) fn new(tensors: Vec<(String, Tensor)>) -> Self {
        TakeTensors(Mutex::new(tensors.into_iter().collect()))
    }
}

impl candle_nn::var_builder::SimpleBackend for TakeTensors {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        with_shape(self.get_unchecked(name, dtype, dev)?, &s, name)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("tensor map poisoned".into()))?
            .remove(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_reads_equal_the_transpose_of_plain_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let (r, c) = (37, 70);
        let values: Vec<f32> = (0..r * c).map(|i| i as f32 * 0.25 - 100.0).collect();
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("a.weight".to_string(), Tensor::from_vec(values.clone(), (r, c), &Device::Cpu).unwrap());
        tensors.insert(
            "b.weight".to_string(),
            Tensor::from_vec(values.clone(), (r, c), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap(),
        );
        tensors.insert("bias".to_string(), Tensor::from_vec(vec![1f32; 3], 3, &Device::Cpu).unwrap());
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let vb = Checkpoint::open(&path).unwrap().into_var_builder(DType::F32, &Device::Cpu);
        for key in ["a.weight", "b.weight"] {
            let name = format!("{key}{TRANSPOSED}");
            assert!(vb.contains_tensor(&name));
            let got: Vec<Vec<f32>> = vb.get((c, r), &name).unwrap().to_vec2().unwrap();
            let want: Vec<Vec<f32>> = vb.get((r, c), key).unwrap().t().unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "{key}");
        }
        // Only 2-D tensors have a transposed form.
        assert!(!vb.contains_tensor(&format!("bias{TRANSPOSED}")));
    }
}
