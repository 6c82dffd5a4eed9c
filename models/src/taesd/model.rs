//! diffusers' `AutoencoderTiny` forward: `EncoderTiny`, `DecoderTiny` and their
//! `AutoencoderTinyBlock`s, with the weight names of diffusers' `nn.Sequential` layers.
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nn::{conv2d, conv2d_no_bias, Conv2d};

use super::TinyAutoencoderConfig;
use crate::error::Result;
use crate::loader::{find_weight_files, mmap_var_builder};
use crate::nn::Activation;

fn conv3x3(c_in: usize, c_out: usize, stride: usize, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    Ok(if bias {
        conv2d(c_in, c_out, 3, cfg, vb)?
    } else {
        conv2d_no_bias(c_in, c_out, 3, cfg, vb)?
    })
}

/// `AutoencoderTinyBlock` with equal input and output widths (the only kind the encoder and
/// decoder build, so its `skip` is the identity): `relu(conv(x) + x)`, where `conv` is
/// conv, act, conv, act, conv (`conv.0`, `conv.2`, `conv.4`).
#[derive(Debug, Clone)]
struct TinyBlock {
    convs: [Conv2d; 3],
    act: Activation,
}

impl TinyBlock {
    fn new(channels: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        let conv = |i: usize| conv3x3(channels, channels, 1, true, vb.pp("conv").pp(i.to_string()));
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.forward(&self.convs[0].forward(x)?)?;
        let h = self.act.forward(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        // diffusers' `fuse` is a plain ReLU whatever act_fn says.
        (h + x)?.relu()
    }
}

/// One entry of diffusers' `layers` Sequential; the index of an entry is its weight prefix.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Block(TinyBlock),
    Act(Activation),
    /// Nearest-neighbour upsampling by this integer factor.
    Upsample(usize),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Conv(conv) => conv.forward(x),
            Self::Block(block) => block.forward(x),
            Self::Act(act) => act.forward(x),
            Self::Upsample(factor) => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(h * factor, w * factor)
            }
        }
    }
}

fn run(layers: &[Layer], x: Tensor) -> candle_core::Result<Tensor> {
    layers.iter().try_fold(x, |x, layer| layer.forward(&x))
}

/// `EncoderTiny.layers`: per stage a conv (the first with bias at stride 1, the others without
/// bias at stride 2) and its blocks, then a conv to the latent channels.
fn encoder_layers(
    config: &TinyAutoencoderConfig,
    act: Activation,
    vb: VarBuilder,
) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let at = |layers: &Vec<Layer>| vb.pp(layers.len().to_string());
    for (i, (&channels, &blocks)) in config
        .encoder_block_out_channels
        .iter()
        .zip(&config.num_encoder_blocks)
        .enumerate()
    {
        let conv = if i == 0 {
            conv3x3(config.in_channels, channels, 1, true, at(&layers))?
        } else {
            conv3x3(channels, channels, 2, false, at(&layers))?
        };
        layers.push(Layer::Conv(conv));
        for _ in 0..blocks {
            let block = TinyBlock::new(channels, act, at(&layers))?;
            layers.push(Layer::Block(block));
        }
    }
    let last = *config.encoder_block_out_channels.last().unwrap_or(&0);
    let conv = conv3x3(last, config.latent_channels, 1, true, at(&layers))?;
    layers.push(Layer::Conv(conv));
    Ok(layers)
}

/// `DecoderTiny.layers`: a conv from the latent channels and the activation, then per stage its
/// blocks, an upsample (all stages but the last) and a conv (without bias, except the last one,
/// which maps to the output channels).
fn decoder_layers(
    config: &TinyAutoencoderConfig,
    act: Activation,
    vb: VarBuilder,
) -> Result<Vec<Layer>> {
    let widths = &config.decoder_block_out_channels;
    let first = conv3x3(config.latent_channels, widths[0], 1, true, vb.pp("0"))?;
    let mut layers = vec![Layer::Conv(first), Layer::Act(act)];
    let at = |layers: &Vec<Layer>| vb.pp(layers.len().to_string());
    let stages = widths.len();
    for (i, (&channels, &blocks)) in widths.iter().zip(&config.num_decoder_blocks).enumerate() {
        let is_final = i + 1 == stages;
        for _ in 0..blocks {
            let block = TinyBlock::new(channels, act, at(&layers))?;
            layers.push(Layer::Block(block));
        }
        if !is_final {
            layers.push(Layer::Upsample(config.upsampling_scaling_factor));
        }
        let c_out = if is_final {
            config.out_channels
        } else {
            channels
        };
        let conv = conv3x3(channels, c_out, 1, is_final, at(&layers))?;
        layers.push(Layer::Conv(conv));
    }
    Ok(layers)
}

#[derive(Debug, Clone)]
pub struct TinyAutoencoder {
    config: TinyAutoencoderConfig,
    dtype: DType,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
}

impl TinyAutoencoder {
    /// Loads `dir/config.json` and `dir/diffusion_pytorch_model(.fp16).safetensors`, converting
    /// the weights to `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = TinyAutoencoderConfig::from_file(&dir.join("config.json"))?;
        config.validate()?;
        let files = find_weight_files("tiny autoencoder", dir, Some("diffusers"))?;
        let vb = mmap_var_builder(&files, dtype, device)?;
        Self::new(vb, &config)
    }

    pub fn new(vb: VarBuilder, config: &TinyAutoencoderConfig) -> Result<Self> {
        config.validate()?;
        let act = config.activation()?;
        Ok(Self {
            config: config.clone(),
            dtype: vb.dtype(),
            encoder: encoder_layers(config, act, vb.pp("encoder").pp("layers"))?,
            decoder: decoder_layers(config, act, vb.pp("decoder").pp("layers"))?,
        })
    }

    pub fn config(&self) -> &TinyAutoencoderConfig {
        &self.config
    }

    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// diffusers' `decode(latents).sample`: see the module doc for which latents. Returns NCHW at
    /// `upsampling_scaling_factor^(stages - 1)` times the latent size, in the model's dtype.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = latents.to_dtype(self.dtype)?;
        // DecoderTiny's soft clamp of its input to (-3, 3).
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let x = run(&self.decoder, x)?;
        // [0, 1] -> [-1, 1].
        Ok(x.affine(2.0, -1.0)?)
    }

    /// diffusers' `encode(image).latents`: `image` NCHW in [-1, 1]; returns the latents in the
    /// same space `decode` takes, in the model's dtype.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let x = image.to_dtype(self.dtype)?;
        // [-1, 1] -> [0, 1], as (x + 1) / 2 like diffusers.
        let x = ((x + 1.0)? * 0.5)?;
        Ok(run(&self.encoder, x)?)
    }
}
