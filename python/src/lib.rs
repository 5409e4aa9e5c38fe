//! `perception_encoder._native`: the Rust library behind a thin PyO3 layer. Inputs are taken
//! out of Python objects while the GIL is held; decoding, transforms and the model run with it
//! released, so two Python threads can encode at once. The Python package
//! (`perception_encoder/__init__.py`) dispatches on input types and adds the reference's names.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::{Array2, Array3, Array4};
use numpy::{IntoPyArray, PyArray2, PyArray3, PyArray4, PyReadonlyArray2, PyReadonlyArray4, PyUntypedArrayMethods};
use perception_encoder::candle_core::{DType, Device, Tensor};
use perception_encoder::preprocess::{decode, DecodedImage, ImageTransform, Pixels, Resample, ResizeMode};
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::video::{load_clip, FrameSampling};
use perception_encoder::zero_shot::ZeroShotClassifier;
use perception_encoder::{l2_normalize, Clip, LoadOptions, ModelSource, Precision, Towers};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use rayon::prelude::*;

/// The library's error as the Python exception its kind calls for.
fn py_err(e: perception_encoder::Error) -> PyErr {
    use perception_encoder::Error as E;
    let msg = e.to_string();
    match &e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        E::UnknownModel { .. }
        | E::InvalidConfig(_)
        | E::InvalidInput(_)
        | E::ImageDecode(_)
        | E::ImageTooLarge { .. }
        | E::ShapeMismatch { .. }
        | E::WrongModel { .. }
        | E::MissingPart { .. }
        | E::NotLoaded(_)
        | E::MissingTensors { .. }
        | E::BadCheckpoint { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// `?` for the library's and candle's results inside the bindings.
trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for perception_encoder::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

impl<T> OrPy<T> for std::result::Result<T, perception_encoder::candle_core::Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| py_err(e.into()))
    }
}

/// One image input, owned, so it can be decoded without the GIL.
enum Image {
    Path(PathBuf),
    Bytes(Vec<u8>),
    /// `H x W x C` uint8 pixels (C = 1, 3 or 4).
    Pixels(Pixels),
}

impl Image {
    fn extract(item: &Bound<'_, PyAny>) -> PyResult<Image> {
        // Bytes first: os.fspath would take them for a path.
        if let Ok(b) = item.cast::<PyBytes>() {
            return Ok(Image::Bytes(b.as_bytes().to_vec()));
        }
        if item.is_instance_of::<PyString>() || item.hasattr("__fspath__")? {
            return Ok(Image::Path(item.extract::<PathBuf>()?));
        }
        if let Ok(a) = item.extract::<numpy::PyReadonlyArray3<u8>>() {
            let shape = a.shape().to_vec();
            let (height, width, channels) = (shape[0], shape[1], shape[2]);
            if !matches!(channels, 1 | 3 | 4) || height == 0 || width == 0 {
                return Err(PyValueError::new_err(format!(
                    "an image array must be H x W x 3 (or 1 or 4 channels), uint8; got shape {shape:?}"
                )));
            }
            let data = a.as_array().iter().copied().collect();
            return Ok(Image::Pixels(Pixels { width, height, channels, data }));
        }
        if let Ok(a) = item.extract::<numpy::PyReadonlyArray2<u8>>() {
            let shape = a.shape().to_vec();
            let data = a.as_array().iter().copied().collect();
            return Ok(Image::Pixels(Pixels { width: shape[1], height: shape[0], channels: 1, data }));
        }
        Err(PyValueError::new_err(format!(
            "an image is a path, bytes of an encoded image, or a uint8 H x W x 3 array; got {}",
            item.get_type().name()?
        )))
    }

    /// The model input `(3, size, size)`.
    fn load(&self, t: &ImageTransform) -> perception_encoder::Result<Tensor> {
        match self {
            Image::Path(p) => {
                if !p.exists() {
                    return Err(perception_encoder::Error::Io {
                        path: p.clone(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    });
                }
                t.load_path(p)
            }
            Image::Bytes(b) => t.apply(&decode(b, t.max_pixels)?),
            Image::Pixels(px) => {
                if px.width as u64 * px.height as u64 > t.max_pixels {
                    return Err(perception_encoder::Error::ImageTooLarge {
                        width: px.width as u32,
                        height: px.height as u32,
                        limit: t.max_pixels,
                    });
                }
                let img = DecodedImage { pixels: px.clone(), resample: Resample::Bilinear, cmyk: false, gray16: None };
                t.apply(&img)
            }
        }
    }
}

fn images(items: &Bound<'_, PyAny>) -> PyResult<Vec<Image>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        out.push(Image::extract(&item?)?);
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("no images given"));
    }
    Ok(out)
}

/// Decode and transform `images` in parallel: `(N, 3, size, size)`.
fn pixels(images: &[Image], t: &ImageTransform) -> perception_encoder::Result<Tensor> {
    let tensors = images.par_iter().map(|i| i.load(t)).collect::<perception_encoder::Result<Vec<Tensor>>>()?;
    Ok(Tensor::stack(&tensors, 0)?)
}

fn to_array2<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let t = t.to_dtype(DType::F32).py()?;
    let (n, d) = t.dims2().py()?;
    let v = t.flatten_all().py()?.to_vec1::<f32>().py()?;
    let a = Array2::from_shape_vec((n, d), v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

fn transform_for(size: usize, center_crop: bool, max_pixels: Option<u64>) -> ImageTransform {
    let mut t = ImageTransform::new(size);
    if center_crop {
        t.mode = ResizeMode::CenterCrop;
    }
    if let Some(m) = max_pixels {
        t.max_pixels = m;
    }
    t
}

fn pixels_tensor(px: &PyReadonlyArray4<'_, f32>) -> PyResult<Tensor> {
    let shape = px.shape().to_vec();
    if shape[1] != 3 {
        return Err(PyValueError::new_err(format!("pixels must be (N, 3, H, W) float32; got shape {shape:?}")));
    }
    let v: Vec<f32> = match px.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => px.as_array().iter().copied().collect(),
    };
    Tensor::from_vec(v, (shape[0], shape[1], shape[2], shape[3]), &Device::Cpu).py()
}

/// A loaded model (see the Python `Model`).
#[pyclass(frozen, name = "_Model", module = "perception_encoder._native")]
struct Model {
    clip: Arc<Clip>,
}

impl Model {
    fn transform(&self, center_crop: bool, max_pixels: Option<u64>) -> ImageTransform {
        let mut t = ImageTransform::for_config(&self.clip.config().vision);
        if center_crop {
            t.mode = ResizeMode::CenterCrop;
        }
        if let Some(m) = max_pixels {
            t.max_pixels = m;
        }
        t
    }

    fn tokenizer(&self) -> PyResult<ClipTokenizer> {
        match &self.clip.config().text {
            Some(t) => Ok(ClipTokenizer::new(t.context_length)),
            None => Err(PyValueError::new_err(format!(
                "{} has no text tower (it is a vision-only model)",
                self.clip.config().name
            ))),
        }
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (name=None, config=None, weights=None, dtype="f32", towers="both"))]
    fn new(
        py: Python<'_>,
        name: Option<String>,
        config: Option<PathBuf>,
        weights: Option<PathBuf>,
        dtype: &str,
        towers: &str,
    ) -> PyResult<Self> {
        let precision: Precision = dtype.parse().map_err(|e| PyValueError::new_err(format!("dtype {dtype:?}: {e}")))?;
        let towers = match towers {
            "both" => Towers::Both,
            "image" => Towers::Image,
            "text" => Towers::Text,
            other => {
                return Err(PyValueError::new_err(format!(
                    "towers {other:?}: expected \"both\", \"image\" or \"text\""
                )))
            }
        };
        for p in config.iter().chain(weights.iter()) {
            if !p.exists() {
                return Err(PyFileNotFoundError::new_err(format!("{}: no such file", p.display())));
            }
        }
        let source = ModelSource::from_options(name.as_deref(), config.as_deref(), weights.as_deref()).py()?;
        let opts = LoadOptions { precision, towers, ..LoadOptions::default() };
        let clip = py.detach(|| source.load(&opts, &mut ())).py()?;
        Ok(Model { clip: Arc::new(clip) })
    }

    /// The model's name.
    #[getter]
    fn name(&self) -> String {
        self.clip.config().name.clone()
    }

    /// The embedding dimension.
    #[getter]
    fn embed_dim(&self) -> usize {
        self.clip.config().embed_dim()
    }

    /// The input side in pixels.
    #[getter]
    fn image_size(&self) -> usize {
        self.clip.config().vision.image_size
    }

    /// The text context length (None for a vision-only model).
    #[getter]
    fn context_length(&self) -> Option<usize> {
        self.clip.config().text.as_ref().map(|t| t.context_length)
    }

    /// `exp(logit_scale)`, the reference's `logit_scale.exp()`.
    #[getter]
    fn logit_scale(&self) -> PyResult<f32> {
        self.clip.logit_scale().py()
    }

    /// The precision the model runs in.
    #[getter]
    fn dtype(&self) -> String {
        self.clip.precision().to_string()
    }

    /// Embeddings of images (paths, bytes, uint8 arrays), `batch_size` at a time.
    #[pyo3(signature = (items, normalize=true, batch_size=8, center_crop=false, max_pixels=None))]
    fn encode_images<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        normalize: bool,
        batch_size: usize,
        center_crop: bool,
        max_pixels: Option<u64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let images = images(items)?;
        let t = self.transform(center_crop, max_pixels);
        let clip = self.clip.clone();
        let out = py
            .detach(|| -> perception_encoder::Result<Tensor> {
                let mut rows = Vec::new();
                for chunk in images.chunks(batch_size.max(1)) {
                    let x = pixels(chunk, &t)?;
                    rows.push(clip.encode_image(&x, normalize)?.to_dtype(DType::F32)?);
                }
                Ok(Tensor::cat(&rows, 0)?)
            })
            .py()?;
        to_array2(py, &out)
    }

    /// Embeddings of preprocessed pixels `(N, 3, H, W)` float32.
    #[pyo3(signature = (pixels, normalize=true))]
    fn encode_pixels<'py>(
        &self,
        py: Python<'py>,
        pixels: PyReadonlyArray4<'py, f32>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = pixels_tensor(&pixels)?;
        let clip = self.clip.clone();
        let out = py.detach(|| clip.encode_image(&x, normalize)).py()?;
        to_array2(py, &out)
    }

    /// Embeddings of texts, `batch_size` at a time.
    #[pyo3(signature = (texts, normalize=true, batch_size=32))]
    fn encode_texts<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        normalize: bool,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if texts.is_empty() {
            return Err(PyValueError::new_err("no texts given"));
        }
        let tok = self.tokenizer()?;
        let clip = self.clip.clone();
        let out = py
            .detach(|| -> perception_encoder::Result<Tensor> {
                let mut rows = Vec::new();
                for chunk in texts.chunks(batch_size.max(1)) {
                    let ids = tok.tokenize_batch(chunk, &Device::Cpu)?;
                    rows.push(clip.encode_text(&ids, normalize)?.to_dtype(DType::F32)?);
                }
                Ok(Tensor::cat(&rows, 0)?)
            })
            .py()?;
        to_array2(py, &out)
    }

    /// Embeddings of token ids `(N, context_length)` (as `tokenize` makes them).
    #[pyo3(signature = (ids, normalize=true))]
    fn encode_ids<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArray2<'py, i64>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let shape = ids.shape().to_vec();
        let tok = self.tokenizer()?;
        if shape[1] != tok.context_length() {
            return Err(PyValueError::new_err(format!(
                "token ids must be (N, {}); got shape {shape:?}",
                tok.context_length()
            )));
        }
        let v: Vec<u32> = ids
            .as_array()
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| PyValueError::new_err(format!("token id {i} is out of range"))))
            .collect::<PyResult<_>>()?;
        let ids = Tensor::from_vec(v, (shape[0], shape[1]), &Device::Cpu).py()?;
        let clip = self.clip.clone();
        let out = py.detach(|| clip.encode_text(&ids, normalize)).py()?;
        to_array2(py, &out)
    }

    /// The embedding of each video: `frames` frames by the benchmarks' rule, each through the
    /// image transform, the mean of their raw embeddings, then normalized if `normalize`.
    #[pyo3(signature = (paths, frames=8, normalize=true))]
    fn encode_videos<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        frames: usize,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        for p in &paths {
            if !p.exists() {
                return Err(PyFileNotFoundError::new_err(format!("{}: no such file", p.display())));
            }
        }
        let t = self.transform(false, None);
        let clip = self.clip.clone();
        let out = py
            .detach(|| -> perception_encoder::Result<Tensor> {
                let mut rows = Vec::new();
                for p in &paths {
                    let x = load_clip(p, frames, FrameSampling::Benchmark, &t)?;
                    let mean = clip.encode_video(&x.unsqueeze(0)?, false)?;
                    rows.push(if normalize { l2_normalize(&mean)? } else { mean }.to_dtype(DType::F32)?);
                }
                Ok(Tensor::cat(&rows, 0)?)
            })
            .py()?;
        to_array2(py, &out)
    }

    /// Token features `(N, T, C)` of preprocessed pixels after block `layer`.
    #[pyo3(signature = (pixels, layer=-1, norm=true, strip_cls=false))]
    fn forward_features<'py>(
        &self,
        py: Python<'py>,
        pixels: PyReadonlyArray4<'py, f32>,
        layer: isize,
        norm: bool,
        strip_cls: bool,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let x = pixels_tensor(&pixels)?;
        let clip = self.clip.clone();
        let out = py
            .detach(|| -> perception_encoder::Result<Tensor> {
                Ok(clip.forward_features(&x, layer, norm, strip_cls)?.to_dtype(DType::F32)?)
            })
            .py()?;
        let (n, t, c) = out.dims3().py()?;
        let v = out.flatten_all().py()?.to_vec1::<f32>().py()?;
        let a = Array3::from_shape_vec((n, t, c), v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Zero-shot class probabilities `(N, L)` of preprocessed pixels over `labels` through
    /// `templates` (prompt ensembling; softmax of exp(logit_scale) * cosine).
    fn classify_pixels<'py>(
        &self,
        py: Python<'py>,
        pixels: PyReadonlyArray4<'py, f32>,
        labels: Vec<String>,
        templates: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if labels.is_empty() {
            return Err(PyValueError::new_err("no labels given"));
        }
        self.tokenizer()?;
        let x = pixels_tensor(&pixels)?;
        let clip = self.clip.clone();
        let out = py
            .detach(|| -> perception_encoder::Result<Tensor> {
                let classifier = ZeroShotClassifier::new(&clip, &labels, &templates, 32)?;
                classifier.probabilities(&clip.encode_image(&x, true)?)
            })
            .py()?;
        to_array2(py, &out)
    }
}

/// Token ids `(N, context_length)` int64, as the reference's tokenizer makes them.
#[pyfunction]
#[pyo3(signature = (texts, context_length=32))]
fn tokenize<'py>(py: Python<'py>, texts: Vec<String>, context_length: usize) -> PyResult<Bound<'py, PyArray2<i64>>> {
    if context_length < 2 {
        return Err(PyValueError::new_err(format!("context_length must be at least 2, got {context_length}")));
    }
    let tok = ClipTokenizer::new(context_length);
    let mut a = Array2::<i64>::zeros((texts.len(), context_length));
    for (i, t) in texts.iter().enumerate() {
        for (j, id) in tok.tokenize(t).into_iter().enumerate() {
            a[(i, j)] = i64::from(id);
        }
    }
    Ok(a.into_pyarray(py))
}

/// Model inputs `(N, 3, size, size)` float32 from images (paths, bytes, uint8 arrays).
#[pyfunction]
#[pyo3(signature = (items, size=224, center_crop=false, max_pixels=None))]
fn transform<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    size: usize,
    center_crop: bool,
    max_pixels: Option<u64>,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    if size == 0 || size > 4096 {
        return Err(PyValueError::new_err(format!("size must be 1..=4096, got {size}")));
    }
    let images = images(items)?;
    let t = transform_for(size, center_crop, max_pixels);
    let out = py.detach(|| pixels(&images, &t)).py()?;
    let n = out.dims()[0];
    let v = out.flatten_all().py()?.to_vec1::<f32>().py()?;
    let a = Array4::from_shape_vec((n, 3, size, size), v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// The preset names.
#[pyfunction]
fn list_models() -> Vec<String> {
    perception_encoder::PRESET_NAMES.iter().map(|s| s.to_string()).collect()
}

/// Use `n` threads for the model's kernels (process-wide, as `torch.set_num_threads`).
#[pyfunction]
fn set_threads(n: usize) -> usize {
    perception_encoder::runtime::set_threads(n)
}

/// Hand the heap's freed memory back to the operating system (after a spike such as a large
/// batch: the package keeps freed buffers for reuse, see the module set-up below).
#[pyfunction]
fn release_freed_memory() {
    perception_encoder::runtime::release_freed_memory();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the `pe` binary does first thing: without it glibc unmaps every freed layer output and
    // page-faults the next one in, 20-40% of a forward pass in a Python process (docs/python.md).
    // Process-wide, so `PE_KEEP_FREED_MEMORY=0` leaves the allocator's defaults alone. The import
    // is the earliest a module runs; glibc's mallopt takes the arena lock, so threads the
    // interpreter already has (numpy's BLAS pool) are safe.
    if std::env::var("PE_KEEP_FREED_MEMORY").map_or(true, |v| v.trim() != "0") {
        perception_encoder::runtime::keep_freed_memory();
    }
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(tokenize, m)?)?;
    m.add_function(wrap_pyfunction!(transform, m)?)?;
    m.add_function(wrap_pyfunction!(list_models, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(release_freed_memory, m)?)?;
    Ok(())
}
