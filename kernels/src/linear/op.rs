//! The linear layer as a candle custom op holding its packed weight.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::element::{bias_values, values};
use crate::gemm::{gemm, Bias, GemmOutput, Isa, LaneMajor, PackedMatrix};

/// A linear layer's (out, in) weight packed for the GEMM once, applied to f32 CPU inputs.
#[derive(Clone, Debug)]
pub struct LinearKernel {
    isa: Isa,
    weight: PackedMatrix,
    bias: Option<Vec<f32>>,
    in_features: usize,
    out_features: usize,
}

impl LinearKernel {
    /// Packs `weight` (out, in) and keeps `bias` (out) as f32, for the microkernel
    /// [`Isa::detected`] picks.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::with_isa(Isa::detected(), weight, bias)
    }

    /// As [`LinearKernel::new`], with a given microkernel (tests run every one).
    pub fn with_isa(isa: Isa, weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let weight = PackedMatrix::pack_b_transposed(
            isa,
            &values::<f32>(weight)?,
            out_features,
            in_features,
        )?;
        let bias = bias_values(bias, out_features, "linear")?;
        Ok(Self {
            isa,
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Applies the layer to x (..., in): x must be an f32 CPU tensor (any layout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            bail!(
                "linear kernel: input must be f32 on the CPU, got {:?} on {:?}",
                x.dtype(),
                x.device()
            );
        }
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for LinearKernel {
    fn name(&self) -> &'static str {
        "imago-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        if dims.last() != Some(&self.in_features) {
            bail!(
                "linear kernel: input shape {dims:?} does not end in {} features",
                self.in_features
            );
        }
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            bail!("linear kernel: input must be contiguous f32");
        };
        let rows = dims[..dims.len() - 1].iter().product();
        let a = LaneMajor::new(
            &values[start..end],
            self.in_features,
            rows,
            self.in_features,
        )?;
        let mut out = vec![0f32; rows * self.out_features];
        let c = GemmOutput::new(&mut out, rows, self.out_features, self.out_features)?;
        let bias = self.bias.as_deref().map_or(Bias::None, Bias::PerColumn);
        gemm(self.isa, &a, &self.weight, c, bias, false)?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features;
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}
