//! Sinusoidal timestep embeddings (diffusers' `get_timestep_embedding` / `Timesteps`) and the
//! `TimestepEmbedding` MLP.
use candle_core::{Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use super::{linear, linear_no_bias, Linear};

use super::Activation;

/// `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift)` in float32, as
/// diffusers computes it: exponent = -ln(10000) * i / (dim/2 - shift), args = t * exp(exponent),
/// [sin, cos] (or [cos, sin] when flipped), zero-padded to an odd `dim`. Returns (len, dim).
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let denominator = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / denominator).exp())
        .collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args = freqs.iter().map(|&f| t * f);
        let sin = args.clone().map(f32::sin);
        let cos = args.map(f32::cos);
        if flip_sin_to_cos {
            data.extend(cos);
            data.extend(sin);
        } else {
            data.extend(sin);
            data.extend(cos);
        }
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_vec(data, (timesteps.len(), dim), device)
}

/// `linear_1`, activation, `linear_2` (optional post-activation), with the optional `cond_proj`
/// (LCM's guidance-scale condition) added to the input.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
    act: Activation,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        embed_dim: usize,
        act: Activation,
        post_act: Option<Activation>,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let cond_proj = match cond_proj_dim {
            Some(d) => Some(linear_no_bias(d, in_dim, vb.pp("cond_proj"))?),
            None => None,
        };
        Ok(Self {
            linear_1: linear(in_dim, embed_dim, vb.pp("linear_1"))?,
            linear_2: linear(embed_dim, embed_dim, vb.pp("linear_2"))?,
            cond_proj,
            act,
            post_act,
        })
    }

    pub fn forward(&self, sample: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let sample = match (condition, &self.cond_proj) {
            (Some(c), Some(proj)) => (sample + proj.forward(c)?)?,
            _ => sample.clone(),
        };
        let x = self.act.forward(&self.linear_1.forward(&sample)?)?;
        let x = self.linear_2.forward(&x)?;
        match self.post_act {
            Some(act) => act.forward(&x),
            None => Ok(x),
        }
    }
}
