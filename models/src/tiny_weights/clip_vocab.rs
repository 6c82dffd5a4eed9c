//! A small CLIP-style BPE vocabulary for the built-in tiny models, laid out like the real CLIP
//! vocabulary: the 256 byte-level symbols (in CLIP's `bytes_to_unicode` order), the same with
//! `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`. The merges are learned
//! here, deterministically, by byte-pair encoding over a fixed list of common English and
//! image-prompt words, so common words become one or a few tokens.
use std::collections::{BTreeMap, HashMap};

/// Most frequent first (earlier words weigh more when merges are learned), space-separated.
const WORDS: &str = "\
     the a of and in to with on is for at by an it as from this that be are or was his her \
     their its one two three photo picture image painting drawing illustration portrait cat dog \
     man woman person people girl boy child face eyes hair hand house city street car tree \
     trees forest mountain mountains river lake sea ocean beach sky sun moon star stars night \
     day light dark water fire snow rain cloud clouds field flower flowers garden park road \
     bridge building castle room table chair window door wall book food fruit apple bird horse \
     fish lion tiger bear astronaut robot dragon ship boat train plane red blue green yellow \
     white black orange purple pink brown gold silver colorful bright small big large little \
     old new young beautiful cute happy sitting standing running walking flying looking wearing \
     holding playing riding eating high quality detailed highly realistic photorealistic \
     cinematic lighting style art digital oil watercolor sketch render studio background \
     landscape scene view close up wide angle shot sharp focus soft warm cold sunset sunrise \
     morning evening winter summer spring autumn under over near into through behind front top \
     side inside outside very more most some many all no not have has had will can would there \
     which what when where who how out about time year world life home work other first last \
     long great good best made make like love anime fantasy futuristic vintage ancient modern \
     abstract minimal surreal dramatic epic trending artstation masterpiece resolution texture \
     pattern shadow reflection glass metal wood stone paper cloth dress hat shirt coat crown \
     sword camera lens film color colors golden hour neon glowing magic space planet galaxy \
     nebula universe island desert jungle valley hill waterfall village town tower temple \
     church market cafe kitchen bedroom library museum statue sculpture mask king queen knight \
     wizard warrior princess monster creature animal animals puppy kitten owl fox wolf rabbit \
     butterfly rose grass leaves wave waves storm fog mist smoke ice crystal diamond pixel \
     cartoon comic poster logo icon text sign words letter number";

/// Upper bound on the number of merges (the list above needs fewer to make every word a token).
const MAX_MERGES: usize = 1200;

const END_OF_WORD: &str = "</w>";

/// The vocabulary (token -> id, ids dense from 0) and the merges in rank order.
pub fn tiny_clip_vocab() -> (HashMap<String, u32>, Vec<(String, String)>) {
    let symbols = bytes_to_unicode_symbols();
    let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}{END_OF_WORD}")));
    let merges = learn_merges();
    for (a, b) in &merges {
        let merged = format!("{a}{b}");
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
    }
    tokens.push("<|startoftext|>".into());
    tokens.push("<|endoftext|>".into());
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| (token, id as u32))
        .collect();
    (vocab, merges)
}

/// CLIP's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100 onwards; listed in CLIP's vocabulary order (the printable ones first).
fn bytes_to_unicode_symbols() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut symbols: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut next = 256u32;
    for b in 0..256u32 {
        if !printable(b) {
            symbols.extend(char::from_u32(next));
            next += 1;
        }
    }
    symbols
}

/// Byte-pair encoding training over [`WORDS`]: repeatedly merge the most frequent adjacent pair
/// (ties broken by the smaller pair, so the result never depends on hash order).
fn learn_merges() -> Vec<(String, String)> {
    let list: Vec<&str> = WORDS.split_whitespace().collect();
    let mut words: Vec<(Vec<String>, u64)> = list
        .iter()
        .enumerate()
        .map(|(rank, word)| {
            let mut symbols: Vec<String> = word.chars().map(|c| c.to_string()).collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str(END_OF_WORD);
            }
            (symbols, (list.len() - rank) as u64)
        })
        .collect();
    let mut merges = Vec::new();
    while merges.len() < MAX_MERGES {
        let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (symbols, weight) in &words {
            for pair in symbols.windows(2) {
                *counts.entry((&pair[0], &pair[1])).or_default() += weight;
            }
        }
        // max_by_key keeps the last maximum; iterate in reverse so the smallest pair wins ties.
        let Some(((a, b), _)) = counts.iter().rev().max_by_key(|(_, &count)| count) else {
            break;
        };
        let (a, b) = (a.to_string(), b.to_string());
        for (symbols, _) in &mut words {
            merge_pair(symbols, &a, &b);
        }
        merges.push((a, b));
    }
    merges
}

fn merge_pair(symbols: &mut Vec<String>, a: &str, b: &str) {
    let mut i = 0;
    while i + 1 < symbols.len() {
        if symbols[i] == a && symbols[i + 1] == b {
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLIP's BPE on one lowercase word: apply the lowest-ranked adjacent merge until none applies.
    fn encode_word(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
        let mut symbols: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str(END_OF_WORD);
        }
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|p| {
                    ranks
                        .get(&(p[0].clone(), p[1].clone()))
                        .map(|&r| (r, p[0].clone(), p[1].clone()))
                })
                .min();
            let Some((_, a, b)) = best else { break };
            merge_pair(&mut symbols, &a, &b);
        }
        symbols
    }

    #[test]
    fn vocabulary_is_consistent() {
        let (vocab, merges) = tiny_clip_vocab();
        let n = vocab.len();
        let mut ids: Vec<u32> = vocab.values().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..n as u32).collect::<Vec<_>>(), "ids dense 0..n");
        assert!(merges.len() >= 300, "{} merges", merges.len());
        assert_eq!(vocab["<|startoftext|>"], n as u32 - 2);
        assert_eq!(vocab["<|endoftext|>"], n as u32 - 1);
        // CLIP's layout: "!" first, then the byte symbols; U+0100 stands for byte 0.
        assert_eq!(vocab["!"], 0);
        assert_eq!(vocab["!</w>"], 256);
        assert_eq!(vocab["\u{100}"], 188);
        assert_eq!(vocab.keys().filter(|t| t.chars().count() == 1).count(), 256);
        for (a, b) in &merges {
            let merged = vocab
                .get(&format!("{a}{b}"))
                .unwrap_or_else(|| panic!("{a} {b}"));
            assert!(
                vocab[a] < *merged && vocab[b] < *merged,
                "{a} {b} before its result"
            );
        }
    }

    #[test]
    fn common_words_are_few_tokens() {
        let (vocab, merges) = tiny_clip_vocab();
        assert_eq!(
            tiny_clip_vocab(),
            (vocab.clone(), merges.clone()),
            "deterministic"
        );
        let ranks: HashMap<(String, String), usize> = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        for word in [
            "a",
            "photo",
            "of",
            "cat",
            "the",
            "astronaut",
            "riding",
            "horse",
        ] {
            let tokens = encode_word(word, &ranks);
            assert_eq!(tokens, vec![format!("{word}{END_OF_WORD}")], "{word}");
            assert!(vocab.contains_key(&tokens[0]));
        }
        // Unseen words still split into known pieces.
        let tokens = encode_word("catsofa", &ranks);
        assert!(
            tokens.len() < 7 && tokens.iter().all(|t| vocab.contains_key(t)),
            "{tokens:?}"
        );
    }
}
