//! `unet/config.json` of a diffusers `UNet2DConditionModel`, with diffusers' defaults for absent
//! keys, and the per-block values the model is built from.
use serde::Deserialize;

use crate::error::ModelError;
use crate::Result;

/// A config value given once for every block or as one value per block. A top-level list is
/// always per block (`Many` is tried first), as diffusers reads it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    Many(Vec<T>),
    One(T),
}

impl<T: Clone> PerBlock<T> {
    /// The value of each of `blocks` blocks; `key` names the field in errors.
    pub fn expand(&self, blocks: usize, key: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); blocks]),
            Self::Many(v) if v.len() == blocks => Ok(v.clone()),
            Self::Many(v) => Err(ModelError::Unsupported(format!(
                "{key} has {} entries for {blocks} blocks",
                v.len()
            ))),
        }
    }
}

/// Transformer depth of one block: one value for all its layers, or one per layer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LayerDepths {
    One(usize),
    PerLayer(Vec<usize>),
}

impl LayerDepths {
    /// The depth of each of `layers` layers. diffusers indexes a per-layer list by layer, so a
    /// too-short list is an error and extra entries are unused.
    pub fn expand(&self, layers: usize, key: &str) -> Result<Vec<usize>> {
        match self {
            Self::One(d) => Ok(vec![*d; layers]),
            Self::PerLayer(v) if v.len() >= layers => Ok(v[..layers].to_vec()),
            Self::PerLayer(v) => Err(ModelError::Unsupported(format!(
                "{key} lists {} layer depths for {layers} layers",
                v.len()
            ))),
        }
    }
}

/// `sample_size`: one side or (height, width).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl SampleSize {
    /// (height, width) in latent pixels.
    pub fn height_width(self) -> (usize, usize) {
        match self {
            Self::Square(s) => (s, s),
            Self::HeightWidth([h, w]) => (h, w),
        }
    }
}

fn d_in_channels() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_down_block_types() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up_block_types() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_only_cross_attention() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_one_usize() -> usize {
    1
}
fn d_one_f64() -> f64 {
    1.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_norm_num_groups() -> Option<usize> {
    Some(32)
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_cross_attention_dim() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_transformer_layers() -> PerBlock<LayerDepths> {
    PerBlock::One(LayerDepths::One(1))
}
fn d_attention_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    #[serde(default = "d_in_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_only_cross_attention")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "d_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers_per_block")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_transformer_layers")]
    pub transformer_layers_per_block: PerBlock<LayerDepths>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<LayerDepths>>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// diffusers' naming quirk: with `num_attention_heads` null this is the number of heads.
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Only matters for half-precision attention; computing in f32 it changes nothing. SDXL base
    /// 1.0's config has it `null` (diffusers reads that as false).
    #[serde(default, deserialize_with = "null_as_false")]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only used by block types this engine does not build (diffusers does not pass it to
    /// DownBlock2D, CrossAttn*Block2D or UpBlock2D).
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// As `resnet_skip_time_act`: unused by the supported block types.
    #[serde(default = "d_one_f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_default")]
    pub attention_type: String,
}

/// Everything one down or up block is built from.
#[derive(Debug, Clone)]
pub(crate) struct BlockSpec {
    pub cross_attention: bool,
    pub num_layers: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: channels of the block below (the input of the first resnet).
    pub prev_output_channels: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub transformer_depths: Vec<usize>,
    pub only_cross_attention: bool,
    pub add_sampler: bool,
}

/// The UNet's layout resolved from the config: per-block lists expanded and reversed for the
/// up path exactly as diffusers does.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub down: Vec<BlockSpec>,
    pub mid: Option<BlockSpec>,
    pub up: Vec<BlockSpec>,
    pub time_embed_dim: usize,
}

fn unsupported(key: &str, value: impl std::fmt::Debug) -> ModelError {
    ModelError::Unsupported(format!("UNet config {key} = {value:?}"))
}

/// `CrossAttnDownBlock2D` -> true, `DownBlock2D` -> false ("UNetRes" prefixes are dropped).
fn block_kind(kind: &str, key: &str, cross: &str, plain: &str) -> Result<bool> {
    let kind = kind.strip_prefix("UNetRes").unwrap_or(kind);
    if kind == cross {
        Ok(true)
    } else if kind == plain {
        Ok(false)
    } else {
        Err(unsupported(key, kind))
    }
}

/// A boolean that may be written `null`, meaning false.
fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

impl UNetConfig {
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Rejects what this engine does not implement, naming the key and its value.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads.is_some() {
            // diffusers itself refuses it (its naming issue #2011).
            return Err(unsupported(
                "num_attention_heads",
                &self.num_attention_heads,
            ));
        }
        if self.dual_cross_attention {
            return Err(unsupported("dual_cross_attention", true));
        }
        if self.attention_type != "default" {
            return Err(unsupported("attention_type", &self.attention_type));
        }
        if self.class_embed_type.is_some() {
            return Err(unsupported("class_embed_type", &self.class_embed_type));
        }
        if self.num_class_embeds.is_some() {
            return Err(unsupported("num_class_embeds", self.num_class_embeds));
        }
        if self.encoder_hid_dim.is_some() || self.encoder_hid_dim_type.is_some() {
            return Err(unsupported(
                "encoder_hid_dim_type",
                &self.encoder_hid_dim_type,
            ));
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") => {
                if self.addition_time_embed_dim.is_none() {
                    return Err(unsupported("addition_time_embed_dim", None::<usize>));
                }
                if self.projection_class_embeddings_input_dim.is_none() {
                    return Err(unsupported(
                        "projection_class_embeddings_input_dim",
                        None::<usize>,
                    ));
                }
            }
            Some(other) => return Err(unsupported("addition_embed_type", other)),
        }
        if self.time_embedding_type != "positional" {
            return Err(unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
            ));
        }
        if self.norm_num_groups.is_none() {
            return Err(unsupported("norm_num_groups", None::<usize>));
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(unsupported(key, k));
            }
        }
        if let Some(mid) = self.mid_block_type.as_deref() {
            if mid != "UNetMidBlock2DCrossAttn" && mid != "UNetMidBlock2D" {
                return Err(unsupported("mid_block_type", mid));
            }
        }
        Ok(())
    }

    pub(crate) fn layout(&self) -> Result<Layout> {
        self.validate()?;
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(unsupported("block_out_channels", &self.block_out_channels));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(ModelError::Unsupported(format!(
                "UNet config has {} block_out_channels, {} down_block_types, {} up_block_types",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let heads = self.attention_head_dim.expand(n, "attention_head_dim")?;
        let cross_dims = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        let only_cross = self
            .only_cross_attention
            .expand(n, "only_cross_attention")?;
        let depths = self
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?;
        if self.reverse_transformer_layers_per_block.is_none()
            && depths.iter().any(|d| matches!(d, LayerDepths::PerLayer(_)))
        {
            return Err(unsupported(
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            ));
        }
        let ch = &self.block_out_channels;

        let mut down = Vec::with_capacity(n);
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let cross = block_kind(
                kind,
                "down_block_types",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            )?;
            down.push(BlockSpec {
                cross_attention: cross,
                num_layers: layers[i],
                in_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                out_channels: ch[i],
                prev_output_channels: 0,
                heads: heads[i],
                cross_attention_dim: cross_dims[i],
                transformer_depths: if cross {
                    depths[i].expand(layers[i], "transformer_layers_per_block")?
                } else {
                    Vec::new()
                },
                only_cross_attention: only_cross[i],
                add_sampler: i + 1 < n,
            });
        }

        let mid = match self.mid_block_type.as_deref() {
            None => None,
            Some(kind) => {
                let cross = kind == "UNetMidBlock2DCrossAttn";
                Some(BlockSpec {
                    cross_attention: cross,
                    // UNetMidBlock2DCrossAttn has one transformer layer; UNetMidBlock2D is built
                    // with num_layers=0 (a single resnet).
                    num_layers: usize::from(cross),
                    in_channels: ch[n - 1],
                    out_channels: ch[n - 1],
                    prev_output_channels: 0,
                    heads: heads[n - 1],
                    cross_attention_dim: cross_dims[n - 1],
                    transformer_depths: if cross {
                        depths[n - 1].expand(1, "transformer_layers_per_block")?
                    } else {
                        Vec::new()
                    },
                    // diffusers does not pass only_cross_attention to this mid block.
                    only_cross_attention: false,
                    add_sampler: false,
                })
            }
        };

        let reversed_depths: Vec<LayerDepths> = match &self.reverse_transformer_layers_per_block {
            Some(r) if r.len() == n => r.clone(),
            Some(r) => {
                return Err(ModelError::Unsupported(format!(
                "UNet config reverse_transformer_layers_per_block has {} entries for {n} blocks",
                r.len()
            )))
            }
            None => depths.iter().rev().cloned().collect(),
        };
        let mut up = Vec::with_capacity(n);
        let mut output_channel = ch[n - 1];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let cross = block_kind(kind, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D")?;
            let prev_output_channel = output_channel;
            output_channel = ch[n - 1 - i];
            let input_channel = ch[n - 1 - (i + 1).min(n - 1)];
            let r = n - 1 - i;
            let num_layers = layers[r] + 1;
            up.push(BlockSpec {
                cross_attention: cross,
                num_layers,
                in_channels: input_channel,
                out_channels: output_channel,
                prev_output_channels: prev_output_channel,
                heads: heads[r],
                cross_attention_dim: cross_dims[r],
                transformer_depths: if cross {
                    reversed_depths[i].expand(num_layers, "reverse_transformer_layers_per_block")?
                } else {
                    Vec::new()
                },
                only_cross_attention: only_cross[r],
                add_sampler: i + 1 < n,
            });
        }

        let time_embed_dim = self.time_embedding_dim.unwrap_or(ch[0] * 4);
        Ok(Layout {
            down,
            mid,
            up,
            time_embed_dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDXL base's layout: heads and transformer depths per block, reversed on the way up.
    #[test]
    fn sdxl_layout_reverses_depths_and_heads() {
        let config = UNetConfig::from_json(
            r#"{"block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
                "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816}"#,
        )
        .unwrap();
        let layout = config.layout().unwrap();
        let down: Vec<_> = layout
            .down
            .iter()
            .map(|b| b.transformer_depths.clone())
            .collect();
        assert_eq!(down, vec![vec![], vec![2, 2], vec![10, 10]]);
        let up: Vec<_> = layout
            .up
            .iter()
            .map(|b| b.transformer_depths.clone())
            .collect();
        assert_eq!(up, vec![vec![10, 10, 10], vec![2, 2, 2], vec![]]);
        let heads: Vec<_> = layout.up.iter().map(|b| b.heads).collect();
        assert_eq!(heads, vec![20, 10, 5]);
        let mid = layout.mid.unwrap();
        assert_eq!((mid.heads, mid.transformer_depths), (20, vec![10]));
        let up_channels: Vec<_> = layout
            .up
            .iter()
            .map(|b| (b.prev_output_channels, b.in_channels, b.out_channels))
            .collect();
        assert_eq!(
            up_channels,
            vec![(1280, 640, 1280), (1280, 320, 640), (640, 320, 320)]
        );
        assert_eq!(layout.time_embed_dim, 1280);
    }

    #[test]
    fn per_layer_depths_need_the_reverse_list() {
        let config = UNetConfig::from_json(
            r#"{"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                "transformer_layers_per_block": [[1, 2], 1]}"#,
        )
        .unwrap();
        let err = config.layout().unwrap_err().to_string();
        assert!(err.contains("transformer_layers_per_block"), "{err}");
    }
}
