//! diffusers' `FluxAttention` with `FluxAttnProcessor`: per-head RMSNorm on q and k, RoPE on the
//! joint sequence, scaled dot-product attention (scale 1/sqrt(head_dim)), no mask.
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

use crate::nn::{linear, Linear};

use super::norm::{RmsNorm, NORM_EPS};
use super::rope::RotaryEmbedding;
use crate::nn::attention::scaled_dot_product_attention;

/// q, k, v projections of one stream with their q/k norms.
#[derive(Debug, Clone)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

/// (B, L, heads, head_dim) query, key and value.
struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Projections {
    /// `names`: (q, k, v, norm_q, norm_k) tensor prefixes.
    fn new(
        vb: &VarBuilder,
        names: [&str; 5],
        dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            q: linear(dim, inner, vb.pp(names[0]))?,
            k: linear(dim, inner, vb.pp(names[1]))?,
            v: linear(dim, inner, vb.pp(names[2]))?,
            norm_q: RmsNorm::new(vb.pp(names[3]), head_dim, NORM_EPS)?,
            norm_k: RmsNorm::new(vb.pp(names[4]), head_dim, NORM_EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: usize, head_dim: usize) -> Result<Qkv> {
        let (batch, len, _) = x.dims3()?;
        let split = |t: Tensor| t.reshape((batch, len, heads, head_dim));
        Ok(Qkv {
            q: self.norm_q.forward(&split(self.q.forward(x)?)?)?,
            k: self.norm_k.forward(&split(self.k.forward(x)?)?)?,
            v: split(self.v.forward(x)?)?,
        })
    }
}

/// Attention over one sequence: RoPE on q and k, then softmax(q k^T / sqrt(d)) v.
/// Returns (B, L, heads * head_dim).
fn attend(qkv: Qkv, rope: &RotaryEmbedding, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (batch, len, _, _) = qkv.q.dims4()?;
    let flat = |t: Tensor| t.contiguous()?.reshape((batch, len, heads * head_dim));
    let q = flat(rope.apply(&qkv.q)?)?;
    let k = flat(rope.apply(&qkv.k)?)?;
    let v = flat(qkv.v)?;
    scaled_dot_product_attention(&q, &k, &v, heads, head_dim)
}

/// The double-stream blocks' attention: image and text streams with their own projections,
/// attending jointly over [text, image].
#[derive(Debug, Clone)]
pub struct JointAttention {
    image: Projections,
    text: Projections,
    to_out: Linear,
    to_add_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl JointAttention {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let inner = heads * head_dim;
        let image = ["to_q", "to_k", "to_v", "norm_q", "norm_k"];
        let text = [
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "norm_added_q",
            "norm_added_k",
        ];
        Ok(Self {
            image: Projections::new(&vb, image, dim, heads, head_dim)?,
            text: Projections::new(&vb, text, dim, heads, head_dim)?,
            to_out: linear(inner, dim, vb.pp("to_out.0"))?,
            to_add_out: linear(inner, dim, vb.pp("to_add_out"))?,
            heads,
            head_dim,
        })
    }

    /// `img`: (B, L_img, dim), `txt`: (B, L_txt, dim); `rope` covers [text, image].
    /// Returns (image output, text output).
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &RotaryEmbedding,
    ) -> Result<(Tensor, Tensor)> {
        let (heads, head_dim) = (self.heads, self.head_dim);
        let txt_len = txt.dim(1)?;
        let img_len = img.dim(1)?;
        let i = self.image.forward(img, heads, head_dim)?;
        let t = self.text.forward(txt, heads, head_dim)?;
        let joint = Qkv {
            q: Tensor::cat(&[&t.q, &i.q], 1)?,
            k: Tensor::cat(&[&t.k, &i.k], 1)?,
            v: Tensor::cat(&[&t.v, &i.v], 1)?,
        };
        let out = attend(joint, rope, heads, head_dim)?;
        // Contiguous halves: candle's batched matmul misreads a non-contiguous left operand.
        let txt_out = out.narrow(1, 0, txt_len)?.contiguous()?;
        let img_out = out.narrow(1, txt_len, img_len)?.contiguous()?;
        Ok((
            self.to_out.forward(&img_out)?,
            self.to_add_out.forward(&txt_out)?,
        ))
    }
}

/// The single-stream blocks' attention (`pre_only`): no output projection; the block's
/// `proj_out` mixes the result with the MLP branch.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    projections: Projections,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let names = ["to_q", "to_k", "to_v", "norm_q", "norm_k"];
        Ok(Self {
            projections: Projections::new(&vb, names, dim, heads, head_dim)?,
            heads,
            head_dim,
        })
    }

    /// `x`: (B, L, dim) -> (B, L, heads * head_dim).
    pub fn forward(&self, x: &Tensor, rope: &RotaryEmbedding) -> Result<Tensor> {
        let qkv = self.projections.forward(x, self.heads, self.head_dim)?;
        attend(qkv, rope, self.heads, self.head_dim)
    }
}
