//! Byte-level BPE as CLIP uses it: every byte of a pre-token becomes one printable character,
//! the last symbol of a word carries the `</w>` suffix, then merges apply by rank.
use std::collections::HashMap;
use std::sync::Mutex;

/// Suffix CLIP's BPE appends to the last symbol of every word.
pub const END_OF_WORD: &str = "</w>";

/// Entries kept in the word cache before it is cleared (prompts reuse few distinct words).
const CACHE_LIMIT: usize = 16_384;

/// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, the others to code points from U+0100 on, in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            let code = next_extra;
            next_extra += 1;
            code
        };
        // Every code here is below 0x200, far from the surrogate range.
        table[usize::from(byte)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The BPE model: vocabulary, merge ranks and a cache of already encoded words.
pub struct BytePairEncoder {
    vocab: HashMap<String, u32>,
    merge_ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    unk_id: u32,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl BytePairEncoder {
    pub fn new(vocab: HashMap<String, u32>, merges: Vec<(String, String)>, unk_id: u32) -> Self {
        let mut merge_ranks = HashMap::with_capacity(merges.len());
        for (rank, pair) in merges.into_iter().enumerate() {
            // A repeated merge keeps its first (highest-priority) rank.
            merge_ranks.entry(pair).or_insert(rank);
        }
        Self {
            vocab,
            merge_ranks,
            byte_chars: byte_to_unicode(),
            unk_id,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Ids of one pre-token (a word, a digit, a run of punctuation) taken as raw text.
    pub fn encode_word(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            return ids;
        }
        let ids = self.merge_word(word);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_owned(), ids.clone());
        }
        ids
    }

    fn merge_word(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let mut symbols: Vec<String> = bytes
            .iter()
            .map(|&b| self.byte_chars[usize::from(b)].to_string())
            .collect();
        match symbols.last_mut() {
            Some(last) => last.push_str(END_OF_WORD),
            None => return Vec::new(),
        }
        // Merge the lowest-ranked adjacent pair everywhere it occurs, until no pair is a merge.
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.merge_ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&rank| (rank, pair[0].clone(), pair[1].clone()))
                })
                .min_by_key(|(rank, _, _)| *rank);
            let Some((_, first, second)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
            .iter()
            .map(|s| self.vocab.get(s).copied().unwrap_or(self.unk_id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printables() {
        let table = byte_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[usize::from(b' ')], '\u{120}'); // 'Ġ', the 33rd unprintable byte
        assert_eq!(table[0], '\u{100}');
        assert!(table.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn merges_apply_by_rank_and_mark_word_end() {
        let vocab: HashMap<String, u32> = [
            ("l", 0),
            ("o", 1),
            ("w</w>", 2),
            ("lo", 3),
            ("low</w>", 4),
            ("<unk>", 5),
            ("ow</w>", 6),
        ]
        .into_iter()
        .map(|(s, i)| (s.to_owned(), i))
        .collect();
        let merges = vec![
            ("l".to_owned(), "o".to_owned()),
            ("lo".to_owned(), "w</w>".to_owned()),
            ("o".to_owned(), "w</w>".to_owned()),
        ];
        let bpe = BytePairEncoder::new(vocab, merges, 5);
        assert_eq!(bpe.encode_word("low"), vec![4]);
        assert_eq!(bpe.encode_word("ow"), vec![6]);
        assert_eq!(bpe.encode_word("lol"), vec![3, 5]); // "l</w>" is not in the vocabulary
        assert_eq!(bpe.encode_word(""), Vec::<u32>::new());
    }
}
