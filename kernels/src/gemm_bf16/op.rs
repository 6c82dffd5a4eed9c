//! The bf16 convolution and linear layer as candle custom ops holding their packed weights.
//! Inputs may be bf16 or f32 CPU tensors; the output has the input's dtype (bf16 activations
//! stay bf16 from layer to layer, rounded once from the f32 sums).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use crate::element::{bias_values, values};

use super::{
    conv2d_bf16, conv2d_output_size, linear_bf16, Conv2dGeometry, Out, PackedB, PackedConvWeights,
    ToBf16,
};

/// Runs `f` on the input's contiguous values and a new output buffer of the same dtype.
fn with_io(
    what: &str,
    storage: &CpuStorage,
    layout: &Layout,
    out_len: usize,
    f: impl Fn(&dyn AnyInput, Out<'_>) -> Result<()>,
) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: input must be contiguous");
    };
    match storage {
        CpuStorage::BF16(v) => {
            let mut out = vec![bf16::ZERO; out_len];
            f(&&v[start..end], Out::Bf16(&mut out))?;
            Ok(CpuStorage::BF16(out))
        }
        CpuStorage::F32(v) => {
            let mut out = vec![0f32; out_len];
            f(&&v[start..end], Out::F32(&mut out))?;
            Ok(CpuStorage::F32(out))
        }
        other => bail!(
            "{what}: input dtype {:?} is not supported (bf16, f32)",
            other.dtype()
        ),
    }
}

/// An input slice of either supported dtype, so the ops' bodies are written once.
trait AnyInput {
    fn conv(
        &self,
        shape: (usize, usize, usize, usize),
        w: &PackedConvWeights,
        g: Conv2dGeometry,
        out: Out<'_>,
    ) -> Result<()>;
    fn linear(&self, w: &PackedB, bias: Option<&[f32]>, out: Out<'_>) -> Result<()>;
}

impl<T: ToBf16> AnyInput for &[T] {
    fn conv(
        &self,
        shape: (usize, usize, usize, usize),
        w: &PackedConvWeights,
        g: Conv2dGeometry,
        out: Out<'_>,
    ) -> Result<()> {
        conv2d_bf16(self, shape, w, g, out)
    }

    fn linear(&self, w: &PackedB, bias: Option<&[f32]>, out: Out<'_>) -> Result<()> {
        linear_bf16(self, w, bias, out)
    }
}

/// A convolution layer (groups 1) computed in bf16 with f32 sums.
#[derive(Clone, Debug)]
pub struct Conv2dBf16 {
    weights: PackedConvWeights,
    geometry: Conv2dGeometry,
}

impl Conv2dBf16 {
    /// Packs `weight` (cout, cin, kh, kw), rounded to bf16, and keeps `bias` (cout) in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, geometry: Conv2dGeometry) -> Result<Self> {
        let shape = weight.dims4()?;
        let bias = bias_values(bias, shape.0, "conv2d_bf16")?;
        let weights = match weight.dtype() {
            DType::BF16 => PackedConvWeights::pack(&values::<bf16>(weight)?, shape, bias)?,
            _ => PackedConvWeights::pack(&values::<f32>(weight)?, shape, bias)?,
        };
        conv2d_output_size((1, 1), (1, 1), geometry)?; // rejects stride or dilation 0
        Ok(Self { weights, geometry })
    }

    /// Convolves x (batch, cin, h, w), a bf16 or f32 CPU tensor (any layout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for Conv2dBf16 {
    fn name(&self) -> &'static str {
        "imago-conv2d-bf16"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, cin, h, w) = layout.shape().dims4()?;
        let (cout, _, kh, kw) = self.weights.shape();
        let (oh, ow) = conv2d_output_size((h, w), (kh, kw), self.geometry)?;
        let out_len = batch * cout * oh * ow;
        let out = with_io("conv2d_bf16", storage, layout, out_len, |x, out| {
            x.conv((batch, cin, h, w), &self.weights, self.geometry, out)
        })?;
        Ok((out, Shape::from((batch, cout, oh, ow))))
    }
}

/// A linear layer y = x Wᵀ + b over the last dimension, computed in bf16 with f32 sums.
#[derive(Clone, Debug)]
pub struct LinearBf16 {
    weight: PackedB,
    bias: Option<Vec<f32>>,
}

impl LinearBf16 {
    /// Packs `weight` (out, in), rounded to bf16, and keeps `bias` (out) in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let bias = bias_values(bias, out_features, "linear_bf16")?;
        let weight = match weight.dtype() {
            DType::BF16 => {
                let w = values::<bf16>(weight)?;
                PackedB::pack_transposed(out_features, in_features, |r| {
                    &w[r * in_features..(r + 1) * in_features]
                })
            }
            _ => {
                let w = values::<f32>(weight)?;
                PackedB::pack_transposed(out_features, in_features, |r| {
                    &w[r * in_features..(r + 1) * in_features]
                })
            }
        };
        Ok(Self { weight, bias })
    }

    pub fn in_features(&self) -> usize {
        self.weight.k()
    }

    pub fn out_features(&self) -> usize {
        self.weight.columns()
    }

    /// Applies the layer to x (..., in), a bf16 or f32 CPU tensor (any layout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for LinearBf16 {
    fn name(&self) -> &'static str {
        "imago-linear-bf16"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let (k, n) = (self.in_features(), self.out_features());
        if dims.last() != Some(&k) {
            bail!("linear_bf16: input shape {dims:?} does not end in {k} features");
        }
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let out = with_io("linear_bf16", storage, layout, rows * n, |x, out| {
            x.linear(&self.weight, self.bias.as_deref(), out)
        })?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        Ok((out, Shape::from(out_dims)))
    }
}
