//! The VAE decoder: conv_in, mid block, UpDecoderBlock2Ds (layers_per_block + 1 resnets each,
//! channels reversed), norm, SiLU, conv_out.
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::banded::{band_bytes, normalized_conv, worth_banding};
use crate::nn::Conv2d;

use super::encoder::{conv3x3, mid_block, resnet_config, VAE_EPS};
use super::VaeConfig;
use crate::nn::{group_norm, Activation, GroupNorm, MidBlock2D, ResnetBlock2D, Upsample2D};

#[derive(Debug, Clone)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `config` must have passed `VaeConfig::validate`.
    pub fn new(vb: VarBuilder, config: &VaeConfig, act: Activation) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let n = reversed.len();
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = reversed[0];
        for (i, &out_c) in reversed.iter().enumerate() {
            let vb_block = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let in_c = if j == 0 { prev } else { out_c };
                    ResnetBlock2D::new(
                        vb_block.pp(format!("resnets.{j}")),
                        resnet_config(config, act, in_c, out_c),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < n {
                Some(Upsample2D::new(vb_block.pp("upsamplers.0"), out_c, out_c)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock2D { resnets, upsampler });
            prev = out_c;
        }
        let first = reversed[n - 1];
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), config.latent_channels, reversed[0])?,
            mid_block: mid_block(vb.pp("mid_block"), config, act)?,
            up_blocks,
            conv_norm_out: group_norm(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                first,
                VAE_EPS,
            )?,
            conv_out: conv3x3(vb.pp("conv_out"), first, config.out_channels)?,
        })
    }

    /// `conv_out(silu(conv_norm_out(h)))`, by bands of rows on a large `h` (the normalized copy
    /// of the full-resolution features never exists in full).
    fn conv_norm_out_then_conv_out(&self, h: &Tensor) -> Result<Tensor> {
        if self.conv_out.keeps_size_3x3() && worth_banding(h, h.elem_count()) {
            if let Some(rows) = self.conv_norm_out.rows_then(h, Activation::Silu)? {
                return normalized_conv(&rows, &self.conv_out, h, band_bytes());
            }
        }
        // Always SiLU here, whatever act_fn (diffusers' `conv_act = nn.SiLU()`).
        let h = self.conv_norm_out.forward_then(h, Activation::Silu)?;
        self.conv_out.forward(&h)
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h, None)?;
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            h = if i == last {
                Self::resnets_in_place(&block.resnets, h)?
            } else {
                Self::resnets(&block.resnets, h)?
            };
            if let Some(up) = &block.upsampler {
                // The last upsampler's output is one mapped block; the heap's free pages (the
                // earlier levels' temporaries) would otherwise stay in the peak beside it.
                h = if i + 1 == last {
                    if worth_banding(&h, 4 * h.elem_count()) {
                        crate::allocator::release_free_heap();
                    }
                    up.forward_doubled_consuming(h)?
                } else {
                    up.forward(&h, None)?
                };
            }
        }
        self.conv_norm_out_then_conv_out(&h)
    }

    fn resnets(resnets: &[ResnetBlock2D], mut h: Tensor) -> Result<Tensor> {
        for resnet in resnets {
            h = resnet.forward(&h, None)?;
        }
        Ok(h)
    }

    /// The last level's resnets, whose input (the upsampler's output, which nothing else holds)
    /// is no longer needed: on a large map the first block writes its output and its first
    /// convolution's into that tensor's two channel halves, and each following block writes
    /// over its input with the other half as scratch, so no other full-resolution tensor is
    /// made. The plain blocks elsewhere (same bits either way).
    fn resnets_in_place(resnets: &[ResnetBlock2D], h: Tensor) -> Result<Tensor> {
        let Some((first, rest)) = resnets.split_first() else {
            return Ok(h);
        };
        if !worth_banding(&h, h.elem_count()) {
            return Self::resnets(resnets, h);
        }
        let Some((out, scratch)) = first.forward_banded_split(h.clone(), band_bytes())? else {
            return Self::resnets(resnets, h);
        };
        drop(h);
        for (j, resnet) in rest.iter().enumerate() {
            if !resnet.forward_banded_over(&out, &scratch, band_bytes())? {
                return Self::resnets(&rest[j..], out);
            }
        }
        Ok(out)
    }
}
