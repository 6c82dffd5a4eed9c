//! Text side of the pipelines: CLIP's BPE tokenizer and the CLIP text encoders.
mod bpe;
pub mod clip;
mod clip_config;
pub mod clip_tokenizer;
mod tokenizer_files;

pub use clip::{input_ids_tensor, ClipTextModel, ClipTextOutput};
pub use clip_config::{ClipActivation, ClipTextConfig, TokenIds};
pub use clip_tokenizer::{ClipTokenizer, TokenizedPrompt};
