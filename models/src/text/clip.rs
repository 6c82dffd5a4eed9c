//! CLIP text encoder as transformers 5.24 `CLIPTextModel` / `CLIPTextModelWithProjection`
//! compute it for diffusers: token + position embeddings, pre-LayerNorm transformer layers with
//! causal self-attention (no padding mask), a final LayerNorm, and the pooled output taken at
//! the eos position (projected by `text_projection` for the WithProjection variant).
use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::nn::{linear, linear_no_bias, Linear};

pub use super::clip_config::{ClipActivation, ClipTextConfig};
use crate::error::{ModelError, Result};

/// What the pipelines take from the encoder.
pub struct ClipTextOutput {
    /// After `final_layer_norm`, `(batch, seq, hidden)`: SD 1.x/2.x `prompt_embeds`.
    pub last_hidden_state: Tensor,
    /// transformers' `hidden_states[-2]` (input of the last layer, no final norm): what SDXL uses.
    pub penultimate_hidden_state: Tensor,
    /// `(batch, hidden)` pooler output, or `(batch, projection_dim)` `text_embeds` with projection.
    pub pooled: Tensor,
}

pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: u32,
    max_positions: usize,
}

impl ClipTextModel {
    /// Loads the weights under `text_model.` (or at the root, as some CLIPTextModel files store
    /// them), with `text_projection` iff the config's architecture is CLIPTextModelWithProjection.
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        config.validate().map_err(ModelError::Unsupported)?;
        let activation = config.activation().map_err(ModelError::Unsupported)?;
        let text_vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let hidden = config.hidden_size;
        let embeddings = text_vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(config.vocab_size, hidden, embeddings.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(
            config.max_position_embeddings,
            hidden,
            embeddings.pp("position_embedding"),
        )?;
        let layers_vb = text_vb.pp("encoder").pp("layers");
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), config, activation))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(
            hidden,
            config.layer_norm_eps,
            text_vb.pp("final_layer_norm"),
        )?;
        let text_projection = if config.has_projection() {
            Some(linear_no_bias(
                hidden,
                config.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            eos_token_id: config.eos_token_id(),
            max_positions: config.max_position_embeddings,
        })
    }

    /// `input_ids`: `(batch, seq)` token ids (u32; other integer types are converted).
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<ClipTextOutput> {
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let (batch, seq_len) = input_ids.dims2()?;
        if seq_len > self.max_positions {
            candle_core::bail!(
                "CLIP text encoder: {seq_len} tokens exceed max_position_embeddings {}",
                self.max_positions
            );
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, seq_len as u32, device)?;
        let mut hidden = self
            .token_embedding
            .forward(&input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq_len, hidden.dtype(), device)?;
        // hidden_states[-2] is the input of the last layer (the embeddings for a 1-layer model).
        let mut penultimate = hidden.clone();
        for layer in &self.layers {
            penultimate = hidden;
            hidden = layer.forward(&penultimate, &mask)?;
        }
        if self.layers.is_empty() {
            penultimate = hidden.clone();
        }
        let last_hidden_state = self.final_layer_norm.forward(&hidden)?;

        let ids = input_ids.to_vec2::<u32>()?;
        let rows = (0..batch)
            .map(|b| {
                let position = self.eos_position(&ids[b]);
                last_hidden_state.get(b)?.get(position)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        let pooled = match &self.text_projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipTextOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    /// transformers' rule: the first position holding `eos_token_id`, or, for legacy configs with
    /// `eos_token_id == 2`, the first position of the largest id; position 0 when neither is found
    /// (torch's argmax over all-false).
    fn eos_position(&self, ids: &[u32]) -> usize {
        if self.eos_token_id == 2 {
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&id| id == max).unwrap_or(0)
        } else {
            ids.iter()
                .position(|&id| id == self.eos_token_id)
                .unwrap_or(0)
        }
    }
}

/// `(seq, seq)` additive mask: 0 on and below the diagonal, -inf above it.
fn causal_mask(
    seq_len: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|row| {
            (0..seq_len).map(move |col| if col > row { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(values, (seq_len, seq_len), device)?.to_dtype(dtype)
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl EncoderLayer {
    fn new(
        vb: VarBuilder,
        config: &ClipTextConfig,
        activation: ClipActivation,
    ) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(hidden, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), config)?,
            layer_norm2: candle_nn::layer_norm(hidden, eps, vb.pp("layer_norm2"))?,
            fc1: linear(hidden, config.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(config.intermediate_size, hidden, vb.pp("mlp").pp("fc2"))?,
            activation,
        })
    }

    fn forward(&self, hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(hidden)?, mask)?;
        let hidden = (hidden + attended)?;
        let mlp = self.fc1.forward(&self.layer_norm2.forward(&hidden)?)?;
        let mlp = self.fc2.forward(&activate(&mlp, self.activation)?)?;
        hidden + mlp
    }
}

fn activate(x: &Tensor, activation: ClipActivation) -> candle_core::Result<Tensor> {
    match activation {
        ClipActivation::QuickGelu => imago_kernels::quick_gelu(x),
        ClipActivation::Gelu => imago_kernels::gelu_erf(x),
        ClipActivation::GeluTanh => imago_kernels::gelu_tanh(x),
        ClipActivation::Relu => x.relu(),
        ClipActivation::Silu => x.silu(),
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            q_proj: linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: linear(hidden, hidden, vb.pp("out_proj"))?,
            num_heads: config.num_attention_heads,
            head_dim: hidden / config.num_attention_heads,
        })
    }

    /// `(batch, seq, hidden)` -> `(batch, heads, seq, head_dim)`.
    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        x.reshape((batch, seq, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let q = self.split_heads(&self.q_proj.forward(x)?)?;
        let k = self.split_heads(&self.k_proj.forward(x)?)?;
        let v = self.split_heads(&self.v_proj.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq, hidden))?;
        self.out_proj.forward(&attended)
    }
}

/// The `(batch, seq)` u32 ids tensor of several prompts (all padded to the same length).
pub fn input_ids_tensor(
    prompts: &[&[u32]],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let seq = prompts.first().map_or(0, |p| p.len());
    if prompts.iter().any(|p| p.len() != seq) {
        candle_core::bail!("prompts of different lengths cannot form one ids tensor");
    }
    let flat: Vec<u32> = prompts.iter().flat_map(|p| p.iter().copied()).collect();
    Tensor::from_vec(flat, (prompts.len(), seq), device)
}
