//! Text side of the pipelines: CLIP's BPE tokenizer and the CLIP text encoders, T5's tokenizer
//! and encoder (FLUX).
mod bpe;
pub mod clip;
mod clip_config;
pub mod clip_tokenizer;
pub mod t5;
mod t5_config;
pub mod t5_tokenizer;
mod tokenizer_files;

pub use clip::{input_ids_tensor, ClipTextModel, ClipTextOutput};
pub use clip_config::{ClipActivation, ClipTextConfig, TokenIds};
pub use clip_tokenizer::{ClipTokenizer, TokenizedPrompt};
pub use t5::T5EncoderModel;
pub use t5_config::{T5Activation, T5Config};
pub use t5_tokenizer::T5Tokenizer;
