//! diffusers' `Attention` with the default processor: multi-head scaled dot-product attention,
//! scale 1/sqrt(head_dim), no mask.
use candle_core::{Result, Tensor, D};
use candle_nn::{Module, VarBuilder};

use super::Linear;

#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

/// Shapes of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    pub query_dim: usize,
    /// Width of the key/value input; `None` for self-attention.
    pub context_dim: Option<usize>,
    pub heads: usize,
    pub head_dim: usize,
    /// Bias on to_q/to_k/to_v (the UNet's transformer blocks have none, the VAE's mid attention has).
    pub qkv_bias: bool,
}

fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Linear::new(weight, bias)
}

impl Attention {
    /// Weights `to_q`, `to_k`, `to_v`, `to_out.0`; the legacy names `query`, `key`, `value`,
    /// `proj_attn` of old VAE checkpoints are read as diffusers converts them.
    pub fn new(vb: VarBuilder, cfg: AttentionConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        let context_dim = cfg.context_dim.unwrap_or(cfg.query_dim);
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let (q, k, v, out) = if legacy {
            ("query", "key", "value", "proj_attn")
        } else {
            ("to_q", "to_k", "to_v", "to_out.0")
        };
        Ok(Self {
            to_q: linear(vb.pp(q), cfg.query_dim, inner, cfg.qkv_bias)?,
            to_k: linear(vb.pp(k), context_dim, inner, cfg.qkv_bias)?,
            to_v: linear(vb.pp(v), context_dim, inner, cfg.qkv_bias)?,
            to_out: linear(vb.pp(out), inner, cfg.query_dim, true)?,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `x`: (batch, tokens, query_dim); `context`: (batch, context_tokens, context_dim) or `None`
    /// for self-attention. Returns (batch, tokens, query_dim).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let out = scaled_dot_product_attention(&q, &k, &v, self.heads, self.head_dim)?;
        self.to_out.forward(&out)
    }
}

/// softmax(q k^T / sqrt(head_dim)) v over `heads` heads; inputs and output are
/// (batch, tokens, heads * head_dim).
///
/// On the CPU this is imago-kernels' tiled attention (no score matrix in memory, each sample's
/// result independent of the batch); elsewhere candle's matmul and softmax.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    #[cfg(feature = "flash-attn")]
    if let Some(out) = super::attention_cuda::flash_attention(q, k, v, heads, head_dim)? {
        return Ok(out);
    }
    if q.device().is_cpu() {
        return imago_kernels::scaled_dot_product_attention(q, k, v, heads, head_dim);
    }
    let (batch, q_len, _) = q.dims3()?;
    let kv_len = k.dim(1)?;
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        if heads == 1 {
            t.contiguous()
        } else {
            t.reshape((batch, len, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        }
    };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = (split(q, q_len)? * scale)?;
    let k = split(k, kv_len)?;
    let v = split(v, kv_len)?;
    let scores = q.matmul(&k.transpose(D::Minus2, D::Minus1)?)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?;
    if heads == 1 {
        Ok(out)
    } else {
        out.transpose(1, 2)?
            .reshape((batch, q_len, heads * head_dim))
    }
}
