//! The T5 encoder as transformers 5.24 `T5EncoderModel` runs it for diffusers' FLUX pipelines:
//! pre-norm blocks with T5's RMS norm, self-attention without the 1/sqrt(d) scale plus a learned
//! bidirectional relative position bias (block 0's, shared by all blocks), a (gated) feed-forward,
//! and no attention mask (FluxPipeline passes none, so padding tokens are attended to).
//!
//! Half precision follows transformers too: with f16 weights the feed-forward `wo` stays f32
//! (`_keep_in_fp32_modules`), which turns the residual stream f32 from block 0's feed-forward on,
//! and f16 residual states that overflowed are clamped to `finfo(f16).max - 1000`.
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use crate::nn::{linear_no_bias, Linear};

use super::t5_config::{T5Activation, T5Config};
use crate::error::{ModelError, Result};

pub struct T5EncoderModel {
    embed_tokens: Embedding,
    /// Block 0's `relative_attention_bias`: (num_buckets, num_heads).
    relative_attention_bias: Embedding,
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    num_buckets: usize,
    max_distance: usize,
}

impl T5EncoderModel {
    /// Loads transformers' tensor names; `encoder.embed_tokens.weight` stands in for the tied
    /// `shared.weight` when a checkpoint only has the former.
    pub fn new(vb: VarBuilder, config: &T5Config) -> Result<Self> {
        config
            .validate()
            .map_err(|message| ModelError::Unsupported(format!("T5 config: {message}")))?;
        let activation = config
            .activation()
            .map_err(|message| ModelError::Unsupported(format!("T5 config: {message}")))?;
        let embeddings_vb = if vb.contains_tensor("shared.weight") {
            vb.pp("shared")
        } else {
            vb.pp("encoder").pp("embed_tokens")
        };
        let embed_tokens = candle_nn::embedding(config.vocab_size, config.d_model, embeddings_vb)?;
        let encoder = vb.pp("encoder");
        let relative_attention_bias = candle_nn::embedding(
            config.relative_attention_num_buckets,
            config.num_heads,
            encoder
                .pp("block")
                .pp(0)
                .pp("layer")
                .pp(0)
                .pp("SelfAttention")
                .pp("relative_attention_bias"),
        )?;
        let blocks = (0..config.num_layers)
            .map(|i| T5Block::new(encoder.pp("block").pp(i), config, activation))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(encoder.pp("final_layer_norm"), config)?;
        Ok(Self {
            embed_tokens,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            num_buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
        })
    }

    /// last_hidden_state (B, L, d_model), in the VarBuilder's dtype.
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, seq_len) = input_ids.dims2()?;
        let position_bias = self.position_bias(seq_len)?;
        let mut hidden = self.embed_tokens.forward(input_ids)?;
        for block in &self.blocks {
            hidden = block.forward(&hidden, &position_bias)?;
        }
        self.final_layer_norm.forward(&hidden)
    }

    /// (1, num_heads, L, L) f32: the bias of key position j for query position i.
    fn position_bias(&self, seq_len: usize) -> candle_core::Result<Tensor> {
        let mut buckets = Vec::with_capacity(seq_len * seq_len);
        for query in 0..seq_len as i64 {
            for key in 0..seq_len as i64 {
                buckets.push(relative_position_bucket(
                    key - query,
                    true,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        let device = self.relative_attention_bias.embeddings().device();
        let buckets = Tensor::from_vec(buckets, (seq_len, seq_len), device)?;
        self.relative_attention_bias
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)
    }
}

/// transformers' `T5Attention._relative_position_bucket` for one relative position
/// (`key - query`), with its f32 logarithm and truncation so bucket edges land where torch's do.
pub(crate) fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    // Half of the buckets are exact distances, the rest grow logarithmically up to max_distance.
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let log_ratio = (distance as f32 / max_exact as f32).ln();
        let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
        let scaled = log_ratio / log_range * (num_buckets - max_exact) as f32;
        bucket += (max_exact + scaled as i64).min(num_buckets - 1);
    }
    bucket as u32
}

/// T5's RMS norm: no mean, no bias, the mean square taken in f32; the normalised states go back to
/// a half-precision weight's dtype before the scale.
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(vb: VarBuilder, config: &T5Config) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(config.d_model, "weight")?,
            eps: config.layer_norm_epsilon,
        })
    }

    fn forward(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        let variance = hidden.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (variance + self.eps)?.sqrt()?.recip()?;
        let normed = hidden.broadcast_mul(&inv_rms)?;
        let out_dtype = match self.weight.dtype() {
            DType::F16 | DType::BF16 => self.weight.dtype(),
            _ => DType::F32,
        };
        normed
            .to_dtype(out_dtype)?
            .broadcast_mul(&self.weight.to_dtype(out_dtype)?)
    }
}

struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl T5Attention {
    fn new(vb: VarBuilder, config: &T5Config) -> candle_core::Result<Self> {
        let inner = config.inner_dim();
        Ok(Self {
            q: linear_no_bias(config.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(config.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(config.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, config.d_model, vb.pp("o"))?,
            num_heads: config.num_heads,
            head_dim: config.d_kv,
        })
    }

    /// `position_bias` (1, H, L, L) f32. Scores, softmax and the weighted sum run in f32, as
    /// torch's SDPA kernels accumulate half-precision inputs.
    fn forward(&self, hidden: &Tensor, position_bias: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq_len, _) = hidden.dims3()?;
        let heads = |linear: &Linear| -> candle_core::Result<Tensor> {
            linear
                .forward(hidden)?
                .reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .to_dtype(DType::F32)?
                .contiguous()
        };
        let (query, key, value) = (heads(&self.q)?, heads(&self.k)?, heads(&self.v)?);
        // T5 folds the scale into its initialisation: no 1/sqrt(head_dim) here.
        let scores = query.matmul(&key.t()?)?.broadcast_add(position_bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, seq_len, self.num_heads * self.head_dim))?
            .to_dtype(hidden.dtype())?;
        self.o.forward(&attended)
    }
}

struct T5FeedForward {
    /// `wi` of the plain block, `wi_0` (the activated half) of the gated one.
    wi: Linear,
    /// `wi_1`, the linear half of the gated block.
    wi_linear: Option<Linear>,
    wo: Linear,
    activation: T5Activation,
}

impl T5FeedForward {
    fn new(
        vb: VarBuilder,
        config: &T5Config,
        activation: T5Activation,
    ) -> candle_core::Result<Self> {
        let (wi, wi_linear) = if config.is_gated() {
            (
                linear_no_bias(config.d_model, config.d_ff, vb.pp("wi_0"))?,
                Some(linear_no_bias(config.d_model, config.d_ff, vb.pp("wi_1"))?),
            )
        } else {
            (
                linear_no_bias(config.d_model, config.d_ff, vb.pp("wi"))?,
                None,
            )
        };
        // transformers keeps `wo` in f32 when loading f16 (not bf16) weights.
        let wo_vb = if vb.dtype() == DType::F16 {
            vb.pp("wo").to_dtype(DType::F32)
        } else {
            vb.pp("wo")
        };
        let wo = linear_no_bias(config.d_ff, config.d_model, wo_vb)?;
        Ok(Self {
            wi,
            wi_linear,
            wo,
            activation,
        })
    }

    fn forward(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let activated = activate(&self.wi.forward(hidden)?, self.activation)?;
        let inner = match &self.wi_linear {
            Some(wi_linear) => (activated * wi_linear.forward(hidden)?)?,
            None => activated,
        };
        self.wo.forward(&inner.to_dtype(self.wo.dtype())?)
    }
}

fn activate(x: &Tensor, activation: T5Activation) -> candle_core::Result<Tensor> {
    match activation {
        T5Activation::Relu => x.relu(),
        T5Activation::Gelu => imago_kernels::gelu_erf(x),
        T5Activation::GeluTanh => imago_kernels::gelu_tanh(x),
        T5Activation::Silu => x.silu(),
    }
}

struct T5Block {
    attention_norm: T5LayerNorm,
    attention: T5Attention,
    feed_forward_norm: T5LayerNorm,
    feed_forward: T5FeedForward,
}

impl T5Block {
    fn new(
        vb: VarBuilder,
        config: &T5Config,
        activation: T5Activation,
    ) -> candle_core::Result<Self> {
        let attention_vb = vb.pp("layer").pp(0);
        let feed_forward_vb = vb.pp("layer").pp(1);
        Ok(Self {
            attention_norm: T5LayerNorm::new(attention_vb.pp("layer_norm"), config)?,
            attention: T5Attention::new(attention_vb.pp("SelfAttention"), config)?,
            feed_forward_norm: T5LayerNorm::new(feed_forward_vb.pp("layer_norm"), config)?,
            feed_forward: T5FeedForward::new(
                feed_forward_vb.pp("DenseReluDense"),
                config,
                activation,
            )?,
        })
    }

    fn forward(&self, hidden: &Tensor, position_bias: &Tensor) -> candle_core::Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.attention_norm.forward(hidden)?, position_bias)?;
        let hidden = clamp_f16_overflow(&add_promoted(hidden, &attended)?)?;
        let fed = self
            .feed_forward
            .forward(&self.feed_forward_norm.forward(&hidden)?)?;
        clamp_f16_overflow(&add_promoted(&hidden, &fed)?)
    }
}

/// `a + b` with torch's type promotion between the float dtypes here: mixed means f32.
fn add_promoted(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.dtype() == b.dtype() {
        a + b
    } else {
        a.to_dtype(DType::F32)? + b.to_dtype(DType::F32)?
    }
}

/// transformers' f16 guard after each sub-layer: when any value overflowed to +-inf, clamp all to
/// +-(65504 - 1000) (64512 once in f16); otherwise the clamp to +-65504 changes nothing. Runs on
/// the device, no sync.
fn clamp_f16_overflow(hidden: &Tensor) -> candle_core::Result<Tensor> {
    if hidden.dtype() != DType::F16 {
        return Ok(hidden.clone());
    }
    let f16_max = f64::from(half::f16::MAX);
    let any_inf = hidden.abs()?.eq(f64::INFINITY)?.max_all()?;
    let device = hidden.device();
    let limit = any_inf.where_cond(
        &Tensor::new(half::f16::from_f64(f16_max - 1000.0), device)?,
        &Tensor::new(half::f16::MAX, device)?,
    )?;
    hidden
        .broadcast_minimum(&limit)?
        .broadcast_maximum(&limit.neg()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use candle_core::Device;

    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/parity/flux-schnell-4step"
    );
    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/t5");

    /// The case prompt's ids at max_sequence_length 32 (transformers' T5TokenizerFast).
    const CASE_IDS: [u32; 32] = [
        42, 4, 7, 6, 9, 22, 35, 31, 19, 4, 14, 7, 14, 16, 3, 5, 11, 3, 4, 25, 28, 26, 6, 3, 4, 7,
        3, 10, 26, 38, 1, 0,
    ];

    fn fixture_encoder(dtype: DType) -> T5EncoderModel {
        let dir = Path::new(FIXTURE).join("model/text_encoder_2");
        let config = T5Config::from_file(&dir.join("config.json")).expect("config");
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                dtype,
                &Device::Cpu,
            )
        }
        .expect("weights");
        T5EncoderModel::new(vb, &config).expect("model")
    }

    fn load(path: &Path, name: &str) -> Tensor {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).expect("load");
        tensors.remove(name).expect(name)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).expect("f32");
        let b = b.to_dtype(DType::F32).expect("f32");
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    fn case_ids() -> Tensor {
        Tensor::new(&CASE_IDS, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids")
    }

    #[test]
    fn f32_output_matches_diffusers_prompt_embeds() {
        let encoder = fixture_encoder(DType::F32);
        let output = encoder.forward(&case_ids()).expect("forward");
        assert_eq!(output.dims(), &[1, 32, 32]);
        assert_eq!(output.dtype(), DType::F32);
        let expected = load(
            &Path::new(FIXTURE).join("expected.safetensors"),
            "prompt_embeds",
        );
        let diff = max_abs_diff(&output, &expected);
        assert!(diff < 1e-4, "max |diff| {diff}");
    }

    #[test]
    fn f16_output_matches_transformers_f16() {
        let encoder = fixture_encoder(DType::F16);
        let output = encoder.forward(&case_ids()).expect("forward");
        assert_eq!(output.dtype(), DType::F16);
        let expected = load(
            &Path::new(DATA).join("encoder_f16.safetensors"),
            "last_hidden_state_f16",
        );
        // f16 rounding noise: transformers' own f16 output is 2.3e-3 from its f32 one, and its
        // eager and SDPA attentions are 3.9e-3 apart in f16.
        let diff = max_abs_diff(&output, &expected);
        assert!(diff < 5e-3, "max |diff| {diff}");
        let f32_expected = load(
            &Path::new(FIXTURE).join("expected.safetensors"),
            "prompt_embeds",
        );
        let diff = max_abs_diff(&output, &f32_expected);
        assert!(diff < 5e-3, "max |diff| to f32 {diff}");
    }

    #[test]
    fn relative_position_buckets_match_transformers() {
        let text = std::fs::read_to_string(Path::new(DATA).join("relative_position_buckets.json"))
            .expect("bucket data");
        let data: serde_json::Value = serde_json::from_str(&text).expect("json");
        let configs = data["configs"].as_array().expect("configs");
        assert!(configs.len() >= 6);
        for case in configs {
            let num_buckets = case["num_buckets"].as_u64().expect("num_buckets") as usize;
            let max_distance = case["max_distance"].as_u64().expect("max_distance") as usize;
            let bidirectional = case["bidirectional"].as_bool().expect("bidirectional");
            let first = case["first_relative_position"].as_i64().expect("first");
            let expected = case["buckets"].as_array().expect("buckets");
            for (offset, bucket) in expected.iter().enumerate() {
                let position = first + offset as i64;
                assert_eq!(
                    u64::from(relative_position_bucket(
                        position,
                        bidirectional,
                        num_buckets,
                        max_distance
                    )),
                    bucket.as_u64().expect("bucket"),
                    "position {position}, buckets {num_buckets}, max distance {max_distance}, \
                     bidirectional {bidirectional}"
                );
            }
        }
    }

    /// A one-block f16 encoder whose attention output overflows f16: transformers' clamp keeps
    /// the states finite (without it the final norm would see inf and return NaN).
    #[test]
    fn f16_overflow_is_clamped_and_stays_finite() {
        let config: T5Config = serde_json::from_str(
            r#"{"vocab_size": 4, "d_model": 4, "d_kv": 2, "d_ff": 4, "num_layers": 1,
                "num_heads": 2, "feed_forward_proj": "gated-gelu"}"#,
        )
        .expect("config");
        let device = Device::Cpu;
        let full = |shape: &[usize], value: f32| {
            Tensor::full(value, shape, &device)
                .and_then(|t| t.to_dtype(DType::F16))
                .expect("tensor")
        };
        let prefix = "encoder.block.0.layer";
        let mut tensors = HashMap::new();
        // Embeddings near f16's max plus an attention output of 16000 overflow the residual.
        tensors.insert("shared.weight".to_owned(), full(&[4, 4], 60000.0));
        for name in ["q", "k"] {
            tensors.insert(
                format!("{prefix}.0.SelfAttention.{name}.weight"),
                full(&[4, 4], 0.0),
            );
        }
        tensors.insert(
            format!("{prefix}.0.SelfAttention.v.weight"),
            full(&[4, 4], 1.0),
        );
        tensors.insert(
            format!("{prefix}.0.SelfAttention.o.weight"),
            full(&[4, 4], 1000.0),
        );
        tensors.insert(
            format!("{prefix}.0.SelfAttention.relative_attention_bias.weight"),
            full(&[32, 2], 0.0),
        );
        tensors.insert(format!("{prefix}.0.layer_norm.weight"), full(&[4], 1.0));
        tensors.insert(format!("{prefix}.1.layer_norm.weight"), full(&[4], 1.0));
        for name in ["wi_0", "wi_1", "wo"] {
            tensors.insert(
                format!("{prefix}.1.DenseReluDense.{name}.weight"),
                full(&[4, 4], 0.0),
            );
        }
        tensors.insert(
            "encoder.final_layer_norm.weight".to_owned(),
            full(&[4], 1.0),
        );
        let vb = VarBuilder::from_tensors(tensors, DType::F16, &device);
        let encoder = T5EncoderModel::new(vb, &config).expect("model");
        let ids = Tensor::new(&[[0u32, 1, 2]], &device).expect("ids");

        // The first residual overflows and is clamped to 65504 - 1000, which f16 holds as 64512
        // (torch's clamp gives the same).
        let block = &encoder.blocks[0];
        let hidden = encoder.embed_tokens.forward(&ids).expect("embed");
        let attended = block
            .attention
            .forward(
                &block.attention_norm.forward(&hidden).expect("norm"),
                &encoder.position_bias(3).expect("bias"),
            )
            .expect("attention");
        let sum = add_promoted(&hidden, &attended).expect("sum");
        let sum_values: Vec<f32> = sum
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("values");
        assert!(sum_values.iter().all(|v| v.is_infinite()), "{sum_values:?}");
        let clamped: Vec<f32> = clamp_f16_overflow(&sum)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("values");
        assert!(clamped.iter().all(|&v| v == 64512.0), "{clamped:?}");

        // `wo` is kept in f32, the output comes back in f16 and is finite (all ones here).
        assert_eq!(block.feed_forward.wo.dtype(), DType::F32);
        let output = encoder.forward(&ids).expect("forward");
        assert_eq!(output.dtype(), DType::F16);
        let values: Vec<f32> = output
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("values");
        assert!(values.iter().all(|v| (v - 1.0).abs() < 1e-3), "{values:?}");
    }

    #[test]
    fn finite_f16_states_are_left_alone() {
        let device = Device::Cpu;
        let states = Tensor::new(&[65504.0f32, -64992.0, 3.5], &device)
            .and_then(|t| t.to_dtype(DType::F16))
            .expect("states");
        let clamped: Vec<f32> = clamp_f16_overflow(&states)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("values");
        assert_eq!(clamped, vec![65504.0, -64992.0, 3.5]);
    }
}
