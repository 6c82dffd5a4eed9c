//! A candle `VarBuilder` backend that answers the tensor names a diffusers model asks for out of a
//! file stored under another naming (Black Forest Labs' / LDM's), cutting fused tensors apart
//! and reshaping as diffusers' single-file converters do.
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::loader::validate_safetensors;

/// How a diffusers tensor is cut out of the stored tensor (always along dimension 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    /// The stored tensor as it is.
    Whole,
    /// Rows `start..start + len`.
    Rows { start: usize, len: usize },
    /// Rows from `start` to the end.
    RowsFrom(usize),
    /// Part `index` of `of` equal parts (`torch.chunk`).
    Chunk { index: usize, of: usize },
    /// The two halves exchanged: BFL orders adaLN outputs (shift, scale), diffusers (scale, shift).
    SwapHalves,
    /// A 1x1 convolution kernel `(out, in, 1, 1)` read as a linear weight `(out, in)`.
    SqueezeConv,
}

/// Where a diffusers tensor lives in the stored file: a stored name (without the file's key
/// prefix) and how to cut it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pub name: String,
    pub fetch: Fetch,
}

impl Source {
    pub fn whole(name: impl Into<String>) -> Self {
        Self::with(name, Fetch::Whole)
    }

    pub fn with(name: impl Into<String>, fetch: Fetch) -> Self {
        Self {
            name: name.into(),
            fetch,
        }
    }
}

/// Maps a diffusers tensor name to its source, `None` when the layout has no counterpart.
pub(super) type NameMap = Box<dyn Fn(&str) -> Option<Source> + Send + Sync>;

struct RemappedSafetensors {
    path: PathBuf,
    /// Prepended to every stored name (e.g. ComfyUI's `model.diffusion_model.`).
    prefix: &'static str,
    /// Names the layout in error messages.
    layout: &'static str,
    tensors: MmapedSafetensors,
    map: NameMap,
}

/// Validates `path` (dtypes, truncation), memory-maps it and serves diffusers names through `map`,
/// converting each tensor to `dtype` when it is fetched.
pub(super) fn remapped_var_builder(
    path: &Path,
    prefix: &'static str,
    layout: &'static str,
    map: NameMap,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    validate_safetensors(path)?;
    // SAFETY: the file was just validated; like every mmap loader we rely on it not being modified
    // while the model is loaded.
    let tensors = unsafe { MmapedSafetensors::new(path) }?;
    let backend = RemappedSafetensors {
        path: path.to_path_buf(),
        prefix,
        layout,
        tensors,
        map,
    };
    Ok(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

impl RemappedSafetensors {
    fn stored_name(&self, source: &Source) -> String {
        format!("{}{}", self.prefix, source.name)
    }

    fn fetch(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(source) = (self.map)(name) else {
            candle_core::bail!(
                "diffusers tensor {name} has no counterpart in the {} layout ({})",
                self.layout,
                self.path.display()
            );
        };
        let stored = self.stored_name(&source);
        if self.tensors.get(&stored).is_err() {
            candle_core::bail!(
                "{} has no tensor {stored} (looked for it as diffusers tensor {name}, {} layout)",
                self.path.display(),
                self.layout
            );
        }
        // Cut on the CPU, so that a part is a tensor of its own and does not keep the whole fused
        // tensor alive (three or four copies of it otherwise), then move and convert.
        let full = self.tensors.load(&stored, &Device::Cpu)?;
        let part = cut(&full, source.fetch).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: cannot read diffusers tensor {name} from {stored}: {e}",
                self.path.display()
            ))
        })?;
        part.to_device(dev)?.to_dtype(dtype)
    }
}

fn cut(full: &Tensor, fetch: Fetch) -> candle_core::Result<Tensor> {
    let rows = full.dim(0)?;
    let rows_part = |start: usize, len: usize| {
        if start + len > rows || len == 0 {
            candle_core::bail!(
                "rows {start}..{} out of {rows} (shape {:?})",
                start + len,
                full.dims()
            );
        }
        full.narrow(0, start, len)?.force_contiguous()
    };
    match fetch {
        Fetch::Whole => Ok(full.clone()),
        Fetch::Rows { start, len } => rows_part(start, len),
        Fetch::RowsFrom(start) => rows_part(start, rows.saturating_sub(start)),
        Fetch::Chunk { index, of } => {
            if of == 0 || rows % of != 0 {
                candle_core::bail!("{rows} rows do not split into {of} equal parts");
            }
            rows_part(index * (rows / of), rows / of)
        }
        Fetch::SwapHalves => {
            if rows % 2 != 0 {
                candle_core::bail!("{rows} rows do not split into two halves");
            }
            let half = rows / 2;
            Tensor::cat(&[full.narrow(0, half, half)?, full.narrow(0, 0, half)?], 0)
        }
        Fetch::SqueezeConv => match full.dims() {
            [_, _] => Ok(full.clone()),
            [out, inp, rest @ ..] if rest.iter().all(|&d| d == 1) => full.reshape((*out, *inp)),
            dims => candle_core::bail!("shape {dims:?} is not a 1x1 convolution kernel"),
        },
    }
}

impl SimpleBackend for RemappedSafetensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.fetch(name, dtype, dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!(
                    "shape mismatch for {name} (read from {} in the {} layout)",
                    self.path.display(),
                    self.layout
                ),
                expected: s,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.map)(name).is_some_and(|source| self.tensors.get(&self.stored_name(&source)).is_ok())
    }
}
