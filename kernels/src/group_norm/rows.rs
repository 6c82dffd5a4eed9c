//! GroupNorm (+ SiLU) applied a band of rows at a time: the statistics are taken once over the
//! whole (N, C, H, W) tensor, then any rows can be normalized on their own, bit for bit as the
//! fused kernel writes them. A caller that feeds each band straight into a convolution never
//! holds the normalized tensor in full (the VAE decoder at full resolution).

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::cpu::{block_statistics, channel_values, ChannelAffine, ChannelParams};
use super::{validate, Activation};

/// The per-(sample, channel) affine of a GroupNorm over one tensor.
pub struct GroupNormRows {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    activation: Activation,
    /// `batch * channels` entries, sample-major.
    affine: Vec<ChannelAffine>,
}

impl GroupNormRows {
    /// Whether `x` can be normalized by rows: a contiguous f32 (N, C, H, W) tensor on the CPU.
    pub fn supports(x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4 && x.is_contiguous()
    }

    /// The statistics of `x`'s groups (one read pass), for [`GroupNormRows::rows`].
    pub fn new(
        x: &Tensor,
        num_groups: usize,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
        activation: Activation,
    ) -> Result<Self> {
        let dims = validate(x, num_groups, weight, bias)?;
        if !Self::supports(x) {
            bail!(
                "group_norm rows: input must be a contiguous f32 (N, C, H, W) CPU tensor, got {:?} {:?}",
                x.dtype(),
                x.dims()
            );
        }
        let (_, _, height, width) = x.dims4()?;
        let (weight, bias) = (weight.contiguous()?, bias.contiguous()?);
        let (ws, wl) = weight.storage_and_layout();
        let (bs, bl) = bias.storage_and_layout();
        let (Storage::Cpu(ws), Storage::Cpu(bs)) = (&*ws, &*bs) else {
            bail!("group_norm rows: weight and bias must be on the CPU");
        };
        let weight = channel_values("weight", ws, wl, dims.channels)?;
        let bias = channel_values("bias", bs, bl, dims.channels)?;
        let params = ChannelParams {
            weight: &weight,
            bias: &bias,
            eps,
            activation,
        };
        let params = &params;
        let per_group = dims.channels_per_group();
        let block = dims.elements_per_group();
        let affine = if block == 0 {
            Vec::new()
        } else {
            with_f32_values(x, |values| {
                values
                    .par_chunks(block)
                    .enumerate()
                    .flat_map_iter(|(index, xb)| {
                        let (center, inv_std) = block_statistics(xb, eps);
                        let first = (index % dims.num_groups) * per_group;
                        (first..first + per_group)
                            .map(move |c| ChannelAffine::new(center, inv_std, params, c))
                    })
                    .collect()
            })?
        };
        Ok(Self {
            batch: dims.batch,
            channels: dims.channels,
            height,
            width,
            activation,
            affine,
        })
    }

    /// Rows `first..first + count` of `x` (the tensor the statistics came from) normalized:
    /// an (N, C, count, W) tensor equal to that slice of the whole GroupNorm's output.
    pub fn rows(&self, x: &Tensor, first: usize, count: usize) -> Result<Tensor> {
        if x.dims() != [self.batch, self.channels, self.height, self.width] || !Self::supports(x) {
            bail!(
                "group_norm rows: input {:?} is not the contiguous f32 tensor of the statistics",
                x.dims()
            );
        }
        if first + count > self.height {
            bail!(
                "group_norm rows: rows {first}..{} past the height {}",
                first + count,
                self.height
            );
        }
        let (plane, band) = (self.height * self.width, count * self.width);
        let mut out = vec![0f32; self.affine.len() * band];
        if band > 0 {
            with_f32_values(x, |values| {
                out.par_chunks_mut(band)
                    .zip(self.affine.par_iter())
                    .enumerate()
                    .for_each(|(index, (dst, channel))| {
                        let start = index * plane + first * self.width;
                        channel.apply(&values[start..start + band], dst, self.activation);
                    })
            })?;
        }
        Tensor::from_vec(
            out,
            (self.batch, self.channels, count, self.width),
            x.device(),
        )
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, from its first element.
fn with_f32_values<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (guard, layout) = x.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("group_norm rows: input must be contiguous");
    };
    match &*guard {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => bail!("group_norm rows: input must be f32 on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(shape: &[usize], scale: f32, offset: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale + offset)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    }

    /// Every band, odd sizes included, has the same bits as the fused kernel's whole output.
    #[test]
    fn bands_match_the_whole_group_norm_bit_for_bit() -> Result<()> {
        let x = ramp(&[2, 6, 7, 5], 0.03, 0.4)?;
        let weight = ramp(&[6], 0.1, 1.0)?;
        let bias = ramp(&[6], 0.05, 0.0)?;
        for activation in [Activation::None, Activation::Silu] {
            let whole = super::super::group_norm(&x, 3, &weight, &bias, 1e-6, activation)?;
            let rows = GroupNormRows::new(&x, 3, &weight, &bias, 1e-6, activation)?;
            for (first, count) in [(0, 7), (0, 3), (3, 4), (6, 1), (2, 0)] {
                let band = rows.rows(&x, first, count)?;
                assert_eq!(band.dims(), [2, 6, count, 5]);
                let want = whole.narrow(2, first, count)?.contiguous()?;
                assert_eq!(bits(&band)?, bits(&want)?, "{activation:?} {first}+{count}");
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_rows_past_the_end_and_other_tensors() -> Result<()> {
        let x = ramp(&[1, 4, 3, 2], 0.1, 0.0)?;
        let (weight, bias) = (
            Tensor::ones(4, DType::F32, &Device::Cpu)?,
            ramp(&[4], 0.1, 0.0)?,
        );
        let rows = GroupNormRows::new(&x, 2, &weight, &bias, 1e-5, Activation::None)?;
        assert!(rows.rows(&x, 2, 2).is_err());
        assert!(rows.rows(&x.t()?, 0, 1).is_err());
        assert!(GroupNormRows::new(
            &x.to_dtype(DType::F16)?,
            2,
            &weight,
            &bias,
            1e-5,
            Activation::None
        )
        .is_err());
        Ok(())
    }
}
