//! The VAE encoder: conv_in, DownEncoderBlock2Ds, mid block, norm, SiLU, conv_out to the
//! posterior's 2 * latent_channels moments.
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nn::{conv2d, Conv2d};

use super::VaeConfig;
use crate::nn::{
    group_norm, Activation, Downsample2D, GroupNorm, MidBlock2D, ResnetBlock2D, ResnetConfig,
    TimeEmbeddingNorm,
};

/// The VAE's resnets and norms use eps 1e-6 whatever the config.
pub(super) const VAE_EPS: f64 = 1e-6;

pub(super) fn conv3x3(vb: VarBuilder, in_c: usize, out_c: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, cfg, vb)
}

/// A resnet without time embedding, as in DownEncoderBlock2D / UpDecoderBlock2D / the mid block.
pub(super) fn resnet_config(
    config: &VaeConfig,
    act: Activation,
    in_c: usize,
    out_c: usize,
) -> ResnetConfig {
    ResnetConfig {
        in_channels: in_c,
        out_channels: out_c,
        temb_channels: None,
        groups: config.norm_num_groups,
        eps: VAE_EPS,
        act,
        time_embedding_norm: TimeEmbeddingNorm::Default,
        output_scale_factor: 1.0,
    }
}

/// The mid block: one head over all channels when attention is on.
pub(super) fn mid_block(vb: VarBuilder, config: &VaeConfig, act: Activation) -> Result<MidBlock2D> {
    let c = *config.block_out_channels.last().unwrap_or(&0);
    let head_dim = config.mid_block_add_attention.then_some(c);
    MidBlock2D::new(vb, resnet_config(config, act, c, c), 1, head_dim)
}

#[derive(Debug, Clone)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// `config` must have passed `VaeConfig::validate`.
    pub fn new(vb: VarBuilder, config: &VaeConfig, act: Activation) -> Result<Self> {
        let ch = &config.block_out_channels;
        let n = ch.len();
        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vb_block = vb.pp(format!("down_blocks.{i}"));
            let in_c = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = (0..config.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { in_c } else { ch[i] };
                    ResnetBlock2D::new(
                        vb_block.pp(format!("resnets.{j}")),
                        resnet_config(config, act, c, ch[i]),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            // padding 0: diffusers pads right/bottom by one before the stride-2 conv.
            let downsampler = if i + 1 < n {
                Some(Downsample2D::new(
                    vb_block.pp("downsamplers.0"),
                    ch[i],
                    ch[i],
                    0,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock2D {
                resnets,
                downsampler,
            });
        }
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), config.in_channels, ch[0])?,
            down_blocks,
            mid_block: mid_block(vb.pp("mid_block"), config, act)?,
            conv_norm_out: group_norm(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                ch[n - 1],
                VAE_EPS,
            )?,
            conv_out: conv3x3(vb.pp("conv_out"), ch[n - 1], 2 * config.latent_channels)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(&h)?;
            }
        }
        h = self.mid_block.forward(&h, None)?;
        // The encoder's output activation is always SiLU (diffusers' `conv_act = nn.SiLU()`).
        let h = self.conv_norm_out.forward_then(&h, Activation::Silu)?;
        self.conv_out.forward(&h)
    }
}
