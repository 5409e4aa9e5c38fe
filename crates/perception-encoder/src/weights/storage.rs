//! Stored tensors: where their bytes are (the memory map or an inflated zip entry), their
//! element type, the strided view a tensor is, and the reads that turn a view into float32
//! values, bounds-checked against what the file really holds.

use std::sync::Arc;

/// Element type of a stored tensor (a PyTorch storage or a safetensors entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDType {
    F32,
    F16,
    BF16,
    F64,
}

impl StorageDType {
    pub(crate) fn size(self) -> usize {
        match self {
            StorageDType::F32 => 4,
            StorageDType::F16 | StorageDType::BF16 => 2,
            StorageDType::F64 => 8,
        }
    }
}

/// Where a tensor's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum Blob {
    /// A byte range of the memory-mapped file.
    Mapped { start: usize, len: usize },
    /// Bytes inflated from a compressed zip entry.
    Owned(Arc<Vec<u8>>),
}

impl Blob {
    pub(crate) fn bytes<'a>(&'a self, mmap: &'a [u8]) -> &'a [u8] {
        match self {
            Blob::Mapped { start, len } => &mmap[*start..*start + *len],
            Blob::Owned(v) => v,
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Blob::Mapped { len, .. } => *len,
            Blob::Owned(v) => v.len(),
        }
    }
}

/// A stored tensor: a strided view into a blob.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub dtype: StorageDType,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
    /// Offset in elements.
    pub offset: usize,
    /// Elements the blob holds from its start (bounds every access).
    pub numel_limit: usize,
    pub blob: Blob,
}

impl RawTensor {
    pub(crate) fn numel(&self) -> usize {
        // Saturating: sizes come from the file and may be absurd in a corrupt one.
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Whether every element lies inside the storage (a truncated file fails here, not later)
    /// and the view has no more elements than its storage: weights are never broadcast views,
    /// and a stride-0 view claiming 2^40 elements must not become a 4 TB allocation. All sums
    /// are checked, so absurd strides are refused rather than wrapped.
    pub(crate) fn in_bounds(&self) -> bool {
        let Some(numel) = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else { return false };
        if numel == 0 {
            return true;
        }
        let last = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(0usize, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
        numel <= self.numel_limit
            && last.and_then(|l| self.offset.checked_add(l)).is_some_and(|end| end < self.numel_limit)
            && self.numel_limit.checked_mul(self.dtype.size()).is_some_and(|bytes| bytes <= self.blob.len())
    }

    /// The values in place when they are contiguous little-endian float32 at an aligned address
    /// (then no copy is needed to read them).
    pub(crate) fn f32_in_place<'a>(&'a self, mmap: &'a [u8]) -> Option<&'a [f32]> {
        let contiguous = self
            .stride
            .iter()
            .rev()
            .zip(self.shape.iter().rev())
            .try_fold(1usize, |expect, (&s, &d)| (d == 1 || s == expect).then(|| expect * d));
        if self.dtype != StorageDType::F32 || contiguous.is_none() || self.numel() == 0 || cfg!(target_endian = "big") {
            return None;
        }
        let raw = &self.blob.bytes(mmap)[self.offset * 4..(self.offset + self.numel()) * 4];
        // SAFETY: the alignment is checked; any bit pattern is a valid f32.
        let (head, values, _) = unsafe { raw.align_to::<f32>() };
        head.is_empty().then_some(values)
    }

    pub(crate) fn read_f32(&self, mmap: &[u8]) -> Vec<f32> {
        let bytes = self.blob.bytes(mmap);
        let size = self.dtype.size();
        let n = self.numel();
        if n == 0 {
            // An empty view may name any offset; there is nothing to read (found by fuzzing).
            return Vec::new();
        }
        let decode = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            match self.dtype {
                StorageDType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                StorageDType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            }
        };
        let contiguous = {
            let mut expect = 1;
            let mut ok = true;
            for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect *= d;
            }
            ok
        };
        if contiguous {
            let raw = &bytes[self.offset * size..(self.offset + n) * size];
            match self.dtype {
                StorageDType::F32 if cfg!(target_endian = "little") => {
                    let mut out = crate::kernels::uninit::<f32>(n);
                    // The source may be unaligned (safetensors headers have any length), so
                    // copy bytes.
                    // SAFETY: `out` owns exactly `raw.len()` bytes, all written here, and any
                    // bit pattern is a valid f32.
                    unsafe {
                        std::ptr::copy_nonoverlapping(raw.as_ptr(), out.as_mut_ptr().cast::<u8>(), raw.len());
                        return crate::kernels::assume_init(out);
                    }
                }
                // bf16 is the top half of an f32: a shift, which vectorizes (the per-element
                // decode above does not, and made bf16 files slower to load than f32 ones).
                StorageDType::BF16 => {
                    return raw
                        .chunks_exact(2)
                        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                        .collect()
                }
                // Converted 8 at a time (F16C where the CPU has it) by `half`; element by
                // element this was the slowest part of loading an f16 file.
                StorageDType::F16 => {
                    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                    let mut out = vec![0f32; n];
                    let mut bits = [0u16; 1024];
                    for (dst, src) in out.chunks_mut(bits.len()).zip(raw.chunks(2 * bits.len())) {
                        let bits = &mut bits[..dst.len()];
                        for (b, s) in bits.iter_mut().zip(src.chunks_exact(2)) {
                            *b = u16::from_le_bytes([s[0], s[1]]);
                        }
                        bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(dst);
                    }
                    return out;
                }
                _ => return (self.offset..self.offset + n).map(decode).collect(),
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let pos = self.offset + idx.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
            out.push(decode(pos));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// A tensor in official terms, possibly derived from stored ones (open_clip layout).
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Raw(RawTensor),
    /// A 2-D tensor stored transposed.
    Transposed(RawTensor),
    /// Same elements, another shape.
    Reshaped(RawTensor, Vec<usize>),
    /// Tensors concatenated along their first dimension.
    RowConcat(Vec<RawTensor>),
}

impl Entry {
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            Entry::Raw(t) => t.shape.clone(),
            Entry::Transposed(t) => t.shape.iter().rev().copied().collect(),
            Entry::Reshaped(_, s) => s.clone(),
            Entry::RowConcat(parts) => {
                let mut s = parts[0].shape.clone();
                if let Some(first) = s.first_mut() {
                    *first = parts.iter().map(|p| p.shape.first().copied().unwrap_or(1)).sum();
                }
                s
            }
        }
    }

    pub(crate) fn parts(&self) -> Vec<&RawTensor> {
        match self {
            Entry::Raw(t) | Entry::Transposed(t) | Entry::Reshaped(t, _) => vec![t],
            Entry::RowConcat(p) => p.iter().collect(),
        }
    }

    /// Why this entry cannot be read, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        for p in self.parts() {
            if !p.in_bounds() {
                return Some("its data lies outside the file (truncated or corrupt checkpoint)".into());
            }
        }
        match self {
            Entry::Transposed(t) if t.shape.len() != 2 => {
                Some(format!("expected a 2-D tensor to transpose, found {:?}", t.shape))
            }
            Entry::Reshaped(t, s) if Some(t.numel()) != s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) => {
                Some(format!("cannot view {:?} as {:?}", t.shape, s))
            }
            Entry::RowConcat(p)
                if p.iter().any(|x| x.shape.len() != p[0].shape.len() || x.shape[1..] != p[0].shape[1..]) =>
            {
                Some("the parts to concatenate differ in shape".into())
            }
            _ => None,
        }
    }

    pub(crate) fn read_f32(&self, mmap: &[u8]) -> Vec<f32> {
        match self {
            Entry::Raw(t) | Entry::Reshaped(t, _) => t.read_f32(mmap),
            Entry::Transposed(t) => {
                let (r, c) = (t.shape[0], t.shape[1]);
                let src = t.read_f32(mmap);
                let mut out = vec![0f32; r * c];
                for i in 0..r {
                    for j in 0..c {
                        out[j * r + i] = src[i * c + j];
                    }
                }
                out
            }
            Entry::RowConcat(parts) => parts.iter().flat_map(|p| p.read_f32(mmap)).collect(),
        }
    }

    /// A 2-D entry's values transposed (`(c, r)` for an `(r, c)` entry), straight from the file
    /// where the stored layout allows it.
    pub(crate) fn read_f32_transposed(&self, mmap: &[u8]) -> Vec<f32> {
        let shape = self.shape();
        let (r, c) = (shape[0], shape[1]);
        match self {
            Entry::Raw(t) => match t.f32_in_place(mmap) {
                Some(values) => crate::kernels::transpose(values, r, c),
                None => crate::kernels::transpose(&t.read_f32(mmap), r, c),
            },
            // Stored transposed already: its own values are the answer.
            Entry::Transposed(t) => t.read_f32(mmap),
            _ => crate::kernels::transpose(&self.read_f32(mmap), r, c),
        }
    }
}
