//! The UNet's down, mid and up blocks (diffusers' DownBlock2D / CrossAttnDownBlock2D,
//! UNetMidBlock2DCrossAttn / UNetMidBlock2D, UpBlock2D / CrossAttnUpBlock2D).
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::BlockSpec;
use super::transformer::{Transformer2DModel, TransformerConfig};
use crate::nn::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// What every resnet of the UNet shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared {
    pub resnet: ResnetConfig,
    pub use_linear_projection: bool,
    pub downsample_padding: usize,
}

impl Shared {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            ..self.resnet
        }
    }

    fn transformer(
        &self,
        vb: VarBuilder,
        spec: &BlockSpec,
        depth: usize,
    ) -> Result<Transformer2DModel> {
        Transformer2DModel::new(
            vb,
            TransformerConfig {
                channels: spec.out_channels,
                heads: spec.heads,
                depth,
                cross_attention_dim: spec.cross_attention_dim,
                groups: self.resnet.groups,
                use_linear_projection: self.use_linear_projection,
                only_cross_attention: spec.only_cross_attention,
            },
        )
    }

    /// One Transformer2DModel per layer for cross-attention blocks, none otherwise.
    fn attentions(&self, vb: &VarBuilder, spec: &BlockSpec) -> Result<Vec<Transformer2DModel>> {
        if !spec.cross_attention {
            return Ok(Vec::new());
        }
        (0..spec.num_layers)
            .map(|i| {
                self.transformer(
                    vb.pp(format!("attentions.{i}")),
                    spec,
                    spec.transformer_depths[i],
                )
            })
            .collect()
    }
}

fn apply_attention(
    attentions: &[Transformer2DModel],
    i: usize,
    h: Tensor,
    context: &Tensor,
) -> Result<Tensor> {
    match attentions.get(i) {
        Some(attn) => attn.forward(&h, context),
        None => Ok(h),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, spec: &BlockSpec, shared: &Shared) -> Result<Self> {
        let resnets = (0..spec.num_layers)
            .map(|i| {
                let in_c = if i == 0 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                ResnetBlock2D::new(
                    vb.pp(format!("resnets.{i}")),
                    shared.resnet(in_c, spec.out_channels),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if spec.add_sampler {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                spec.out_channels,
                spec.out_channels,
                shared.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions: shared.attentions(&vb, spec)?,
            downsampler,
        })
    }

    /// Returns the block output and appends its skip connections to `skips`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb))?;
            h = apply_attention(&self.attentions, i, h, context)?;
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    /// `scale_factor` is the config's mid_block_scale_factor (the resnets' output scale).
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        shared: &Shared,
        scale_factor: f64,
    ) -> Result<Self> {
        let resnet = ResnetConfig {
            output_scale_factor: scale_factor,
            ..shared.resnet(spec.in_channels, spec.out_channels)
        };
        let first = ResnetBlock2D::new(vb.pp("resnets.0"), resnet)?;
        let layers = (0..spec.num_layers)
            .map(|i| {
                let attn = shared.transformer(
                    vb.pp(format!("attentions.{i}")),
                    spec,
                    spec.transformer_depths[i],
                )?;
                let res = ResnetBlock2D::new(vb.pp(format!("resnets.{}", i + 1)), resnet)?;
                Ok((attn, res))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { first, layers })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, Some(temb))?;
        for (attn, resnet) in &self.layers {
            h = attn.forward(&h, context)?;
            h = resnet.forward(&h, Some(temb))?;
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    pub fn new(vb: VarBuilder, spec: &BlockSpec, shared: &Shared) -> Result<Self> {
        let n = spec.num_layers;
        let resnets = (0..n)
            .map(|i| {
                let skip_c = if i == n - 1 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                let in_c = if i == 0 {
                    spec.prev_output_channels
                } else {
                    spec.out_channels
                };
                ResnetBlock2D::new(
                    vb.pp(format!("resnets.{i}")),
                    shared.resnet(in_c + skip_c, spec.out_channels),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if spec.add_sampler {
            Some(Upsample2D::new(
                vb.pp("upsamplers.0"),
                spec.out_channels,
                spec.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions: shared.attentions(&vb, spec)?,
            upsampler,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips`: this block's skip connections in the order the down path produced them (the
    /// last one is consumed first). `upsample_size`: the size to upsample to when the input
    /// is not a multiple of the UNet's overall factor.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            h = Tensor::cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, Some(temb))?;
            h = apply_attention(&self.attentions, i, h, context)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&h, upsample_size),
            None => Ok(h),
        }
    }
}
