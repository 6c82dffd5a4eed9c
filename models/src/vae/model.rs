//! diffusers' `AutoencoderKL`: encode to a diagonal Gaussian posterior, decode latents.
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{conv2d, Conv2d};

use super::decoder::Decoder;
use super::encoder::Encoder;
use super::VaeConfig;
use crate::nn::Activation;
use crate::Result;

/// The encoder's posterior: `logvar` is clamped to [-30, 20] as diffusers does.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits the encoder's moments (batch, 2 * latent, h, w) into mean and clamped logvar.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, c)?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        Ok(Self { mean, logvar })
    }

    /// mean + exp(0.5 * logvar) * noise, with `noise` of the mean's shape.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        let std = (&self.logvar * 0.5)?.exp()?;
        Ok((&self.mean + (std * noise)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate()?;
        let act = Activation::from_config("act_fn", &config.act_fn)?;
        let latent = config.latent_channels;
        let one_by_one = |name: &str, c: usize| conv2d(c, c, 1, Default::default(), vb.pp(name));
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(vb.pp("encoder"), config, act)?,
            decoder: Decoder::new(vb.pp("decoder"), config, act)?,
            quant_conv: config
                .use_quant_conv
                .then(|| one_by_one("quant_conv", 2 * latent))
                .transpose()?,
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| one_by_one("post_quant_conv", latent))
                .transpose()?,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// `image`: NCHW in [-1, 1].
    pub fn encode(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        DiagonalGaussian::from_moments(&self.moments(image)?)
    }

    /// The encoder's output after quant_conv: (batch, 2 * latent, h, w), before the split.
    pub(super) fn moments(&self, image: &Tensor) -> Result<Tensor> {
        let moments = self.encoder.forward(image)?;
        Ok(match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        })
    }

    /// `latents`: already divided by scaling_factor (and shifted back by shift_factor).
    /// Returns NCHW, roughly in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }
}
