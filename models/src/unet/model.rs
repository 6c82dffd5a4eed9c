//! diffusers' `UNet2DConditionModel` forward pass (SD 1.x/2.x, SDXL), built from its config.
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nn::{conv2d, Conv2d};

use super::blocks::{DownBlock, MidBlock, Shared, UpBlock};
use super::config::UNetConfig;
use crate::error::ModelError;
use crate::nn::{
    group_norm, timestep_embedding, Activation, GroupNorm, ResnetConfig, TimeEmbeddingNorm,
    TimestepEmbedding,
};
use crate::Result;

/// SDXL's micro-conditioning (`added_cond_kwargs`): pooled text embeddings (batch, dim) and
/// `add_time_ids` (batch, 6).
#[derive(Debug, Clone)]
pub struct AddedConditions {
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
}

/// `addition_embed_type = "text_time"`: sinusoidal embeddings of the time ids, appended to the
/// text embeddings, through an MLP.
#[derive(Debug, Clone)]
struct TextTimeEmbedding {
    time_dim: usize,
    input_dim: usize,
    embedding: TimestepEmbedding,
}

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
}

fn optional_activation(key: &str, name: &Option<String>) -> Result<Option<Activation>> {
    name.as_deref()
        .map(|n| Activation::from_config(key, n))
        .transpose()
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let layout = config.layout()?;
        let ch = &config.block_out_channels;
        let act = Activation::from_config("act_fn", &config.act_fn)?;
        // validate() has checked that norm_num_groups is set.
        let groups = config.norm_num_groups.unwrap_or(32);
        let temb = layout.time_embed_dim;

        let conv = |name: &str, in_c: usize, out_c: usize, k: usize| {
            let cfg = Conv2dConfig {
                padding: (k - 1) / 2,
                ..Default::default()
            };
            conv2d(in_c, out_c, k, cfg, vb.pp(name))
        };
        let conv_in = conv("conv_in", config.in_channels, ch[0], config.conv_in_kernel)?;
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            ch[0],
            temb,
            act,
            optional_activation("timestep_post_act", &config.timestep_post_act)?,
            config.time_cond_proj_dim,
        )?;
        let add_embedding = match config.addition_embed_type.as_deref() {
            Some("text_time") => {
                let (Some(time_dim), Some(input_dim)) = (
                    config.addition_time_embed_dim,
                    config.projection_class_embeddings_input_dim,
                ) else {
                    // validate() guarantees both; keep a clear error rather than a panic.
                    return Err(ModelError::Unsupported(
                        "addition_embed_type \"text_time\" without its dimensions".into(),
                    ));
                };
                // diffusers builds this MLP with its default activation (silu), not act_fn.
                let embedding = TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    input_dim,
                    temb,
                    Activation::Silu,
                    None,
                    None,
                )?;
                Some(TextTimeEmbedding {
                    time_dim,
                    input_dim,
                    embedding,
                })
            }
            _ => None,
        };

        let shared = Shared {
            resnet: ResnetConfig {
                in_channels: 0,
                out_channels: 0,
                temb_channels: Some(temb),
                groups,
                eps: config.norm_eps,
                act,
                time_embedding_norm: TimeEmbeddingNorm::from_config(
                    &config.resnet_time_scale_shift,
                )?,
                output_scale_factor: 1.0,
            },
            use_linear_projection: config.use_linear_projection,
            downsample_padding: config.downsample_padding,
        };
        let down_blocks = layout
            .down
            .iter()
            .enumerate()
            .map(|(i, spec)| DownBlock::new(vb.pp(format!("down_blocks.{i}")), spec, &shared))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid_block = match &layout.mid {
            Some(spec) => Some(MidBlock::new(
                vb.pp("mid_block"),
                spec,
                &shared,
                config.mid_block_scale_factor,
            )?),
            None => None,
        };
        let up_blocks = layout
            .up
            .iter()
            .enumerate()
            .map(|(i, spec)| UpBlock::new(vb.pp(format!("up_blocks.{i}")), spec, &shared))
            .collect::<candle_core::Result<Vec<_>>>()?;

        Ok(Self {
            config: config.clone(),
            conv_in,
            time_embedding,
            add_embedding,
            time_embed_act: optional_activation(
                "time_embedding_act_fn",
                &config.time_embedding_act_fn,
            )?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), groups, ch[0], config.norm_eps)?,
            conv_act: act,
            conv_out: conv(
                "conv_out",
                ch[0],
                config.out_channels,
                config.conv_out_kernel,
            )?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The noise (or v) prediction for `sample` (batch, in_channels, h, w) at `timestep`,
    /// conditioned on `encoder_hidden_states` (batch, tokens, cross_attention_dim).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        self.forward_with_timestep_cond(sample, timestep, encoder_hidden_states, added, None)
    }

    /// `forward` with diffusers' `timestep_cond` (batch, time_cond_proj_dim), the guidance
    /// embedding of LCM-distilled UNets (config `time_cond_proj_dim`).
    pub fn forward_with_timestep_cond(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = sample.dims4()?;
        let device = sample.device();
        if timestep_cond.is_some() && self.config.time_cond_proj_dim.is_none() {
            return Err(ModelError::invalid(
                "timestep_cond",
                "this UNet has no time_cond_proj_dim to take a timestep condition",
            ));
        }

        // 1. time: diffusers casts the timestep to float32 before the sinusoidal embedding.
        let t_emb = timestep_embedding(
            &vec![timestep as f32; batch],
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            device,
        )?
        .to_dtype(sample.dtype())?;
        let mut emb = self.time_embedding.forward(&t_emb, timestep_cond)?;
        if let Some(add) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                ModelError::invalid(
                    "added_conditions",
                    "this UNet (addition_embed_type \"text_time\") needs text_embeds and time_ids",
                )
            })?;
            emb = (emb + self.text_time_embedding(add, added, batch)?)?;
        }
        if let Some(act) = self.time_embed_act {
            emb = act.forward(&emb)?;
        }

        // 2. pre-process
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let mut h = self.conv_in.forward(&sample)?;

        // 3. down
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, encoder_hidden_states, &mut skips)?;
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &emb, encoder_hidden_states)?;
        }

        // 5. up: when the input is not a multiple of the overall upsampling factor, each
        // upsampler is told the size of the skip connection it must match.
        let factor = 1usize << (self.up_blocks.len().saturating_sub(1));
        let forward_size = height % factor != 0 || width % factor != 0;
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n = block.num_layers();
            let res = skips.split_off(skips.len() - n);
            let upsample_size = match skips.last() {
                Some(s) if forward_size && i != last => {
                    let (_, _, sh, sw) = s.dims4()?;
                    Some((sh, sw))
                }
                _ => None,
            };
            h = block.forward(&h, &res, &emb, encoder_hidden_states, upsample_size)?;
        }

        // 6. post-process
        let h = self.conv_norm_out.forward_then(&h, self.conv_act)?;
        Ok(self.conv_out.forward(&h)?)
    }

    fn text_time_embedding(
        &self,
        add: &TextTimeEmbedding,
        added: &AddedConditions,
        batch: usize,
    ) -> Result<Tensor> {
        let text = &added.text_embeds;
        let ids: Vec<f32> = added
            .time_ids
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let per_sample_ids = ids.len() / batch.max(1);
        let (text_batch, text_dim) = text.dims2()?;
        if text_batch != batch
            || ids.len() != batch * per_sample_ids
            || text_dim + per_sample_ids * add.time_dim != add.input_dim
        {
            return Err(ModelError::invalid(
                "added_conditions",
                format!(
                    "text_embeds {:?} and time_ids {:?} do not make the {} inputs of add_embedding \
                     for batch {batch}",
                    text.dims(),
                    added.time_ids.dims(),
                    add.input_dim
                ),
            ));
        }
        let time = timestep_embedding(
            &ids,
            add.time_dim,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            text.device(),
        )?
        .reshape((batch, per_sample_ids * add.time_dim))?
        .to_dtype(text.dtype())?;
        let input = Tensor::cat(&[text, &time], 1)?;
        Ok(add.embedding.forward(&input, None)?)
    }
}
