//! diffusers' `UNetMidBlock2D`: resnet, then `num_layers` x (optional spatial self-attention,
//! resnet). The VAE uses it with one attention layer and no time embedding.
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::AttentionConfig;
use super::{group_norm, Attention, GroupNorm, ResnetBlock2D, ResnetConfig};

/// Self-attention over the pixels of a feature map, with its own GroupNorm and a residual
/// connection (diffusers' `Attention` with `norm_num_groups` and `residual_connection=True`).
#[derive(Debug, Clone)]
pub struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attention: Attention,
    rescale_output_factor: f64,
}

impl SpatialSelfAttention {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        head_dim: usize,
        groups: usize,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let attention = Attention::new(
            vb.clone(),
            AttentionConfig {
                query_dim: channels,
                context_dim: None,
                heads: channels / head_dim,
                head_dim,
                qkv_bias: true,
            },
        )?;
        Ok(Self {
            group_norm: group_norm(vb.pp("group_norm"), groups, channels, eps)?,
            attention,
            rescale_output_factor,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // GroupNorm over (b, c, h*w), then tokens are the pixels: (b, h*w, c).
        let normed = self.group_norm.forward(&x.reshape((b, c, h * w))?)?;
        let tokens = normed.transpose(1, 2)?.contiguous()?;
        let out = self.attention.forward(&tokens, None)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (out + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

#[derive(Debug, Clone)]
pub struct MidBlock2D {
    first: ResnetBlock2D,
    layers: Vec<(Option<SpatialSelfAttention>, ResnetBlock2D)>,
}

impl MidBlock2D {
    /// `resnet` describes every resnet (in = out channels); `attention_head_dim` is the head width
    /// of the attention layers, `None` when `add_attention` is false.
    pub fn new(
        vb: VarBuilder,
        resnet: ResnetConfig,
        num_layers: usize,
        attention_head_dim: Option<usize>,
    ) -> Result<Self> {
        let first = ResnetBlock2D::new(vb.pp("resnets.0"), resnet)?;
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let attention = match attention_head_dim {
                Some(head_dim) => Some(SpatialSelfAttention::new(
                    vb.pp(format!("attentions.{i}")),
                    resnet.in_channels,
                    head_dim,
                    resnet.groups,
                    resnet.eps,
                    resnet.output_scale_factor,
                )?),
                None => None,
            };
            let block = ResnetBlock2D::new(vb.pp(format!("resnets.{}", i + 1)), resnet)?;
            layers.push((attention, block));
        }
        Ok(Self { first, layers })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attention, resnet) in &self.layers {
            if let Some(attention) = attention {
                h = attention.forward(&h)?;
            }
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}
