//! The character bag: a second input of a distilled multilingual text tower beside its
//! sentence embedding.
//!
//! Why: the distilled tower maps multilingual-e5-small's sentence embedding into the English
//! tower's space, and E5-small aligns Chinese words with their English translations poorly
//! (老虎 "tiger" lands nearest "yak"; zh→en word retrieval R@1 0.18 among 300 held-out
//! dictionary words). Chinese words are built from characters that carry meaning
//! (蜜蜂 bee, 黄蜂 wasp, 蜂鸟 hummingbird share 蜂), so a head that also sees which characters
//! and character pairs a query holds can carry what it learned about one word to unseen
//! words sharing characters. Measured in models/README.md ("A character bag").
//!
//! What: every maximal run of CJK characters (ideographs, kana, hangul) gives its characters
//! and its adjacent pairs; each is hashed (FNV-1a, 64 bit, of its UTF-8 bytes) into one of
//! `buckets` counters; the counts are L2-normalized. Text without such characters gives
//! the zero vector, so English and other scripts read the sentence embedding alone, unless
//! the bag also has slots for every other word's character trigrams (`trigram_buckets`,
//! the step measured for Cyrillic, Arabic and Latin scripts in models/README.md). The
//! same function feeds training (`distill --char-buckets`) and every query, so the two
//! cannot disagree.

/// Whether `c` belongs to a script written without spaces between words, whose characters
/// carry meaning: CJK ideographs (with extension A and compatibility forms), kana, hangul.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FA1F) // CJK extensions B-F, compatibility supplement
}

fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_BASIS, bytes)
}

/// FNV-1a's starting value; [`fnv1a_extend`] from it hashes a byte string.
pub(crate) const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from the hash `h` of what came before them (the router
/// of [`super::language`] hashes a tag byte, then a gram).
pub(crate) fn fnv1a_extend(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The shape of a character bag: `buckets` slots for the CJK characters and pairs, then
/// `trigram_buckets` slots (0: none) for every other word's character trigrams. The two
/// parts have slots of their own and unit length each, so a CJK query reads exactly the
/// same bag with or without trigrams, and a long Latin word cannot drown a Chinese one in
/// a mixed query (the measured trade-offs of both layouts: models/README.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CharBag {
    pub buckets: usize,
    pub trigram_buckets: usize,
}

impl CharBag {
    /// The width of the bag: the graph input's second dimension.
    pub fn width(&self) -> usize {
        self.buckets + self.trigram_buckets
    }

    /// The bag of `text`: its CJK characters and adjacent pairs (each maximal run of CJK
    /// characters gives its characters and pairs, never pairs across other characters) in
    /// the first `buckets` slots; the character trigrams of every other word, lower-cased,
    /// with `<` and `>` at its ends (fastText's subwords), in the next `trigram_buckets`.
    /// Each gram is hashed (FNV-1a 64 of its UTF-8 bytes) into its part; each part is
    /// L2-normalized on its own (zeros when the text has no such gram).
    pub fn bag(&self, text: &str) -> Vec<f32> {
        let mut bag = vec![0f32; self.width()];
        let (cjk, tri) = bag.split_at_mut(self.buckets);
        if !tri.is_empty() {
            for word in text.split(|c: char| !c.is_alphabetic() || is_cjk(c)) {
                if word.is_empty() {
                    continue;
                }
                let w: Vec<char> = std::iter::once('<')
                    .chain(word.chars().flat_map(char::to_lowercase))
                    .chain(std::iter::once('>'))
                    .collect();
                for t in w.windows(3) {
                    count(tri, &t.iter().collect::<String>());
                }
            }
            normalize(tri);
        }
        if !cjk.is_empty() {
            let mut prev: Option<usize> = None;
            for (i, c) in text.char_indices() {
                if !is_cjk(c) {
                    prev = None;
                    continue;
                }
                count(cjk, &text[i..i + c.len_utf8()]);
                if let Some(j) = prev {
                    count(cjk, &text[j..i + c.len_utf8()]);
                }
                prev = Some(i);
            }
            normalize(cjk);
        }
        bag
    }
}

fn count(part: &mut [f32], gram: &str) {
    part[(fnv1a(gram.as_bytes()) % part.len() as u64) as usize] += 1.0;
}

fn normalize(part: &mut [f32]) {
    let norm = part.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        part.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(s: &str, buckets: usize) -> usize {
        (fnv1a(s.as_bytes()) % buckets as u64) as usize
    }

    fn cjk(buckets: usize) -> CharBag {
        CharBag {
            buckets,
            trigram_buckets: 0,
        }
    }

    #[test]
    fn counts_characters_and_adjacent_pairs_of_each_run() {
        let n = 1 << 20; // wide enough that these few grams do not collide
        let bag = cjk(n).bag("一只老虎 and 蜜蜂");
        let grams = [
            "一", "只", "老", "虎", "一只", "只老", "老虎", "蜜", "蜂", "蜜蜂",
        ];
        let slots: std::collections::HashSet<usize> = grams.iter().map(|g| slot(g, n)).collect();
        assert_eq!(slots.len(), grams.len(), "test grams collide");
        let nonzero: Vec<usize> = (0..n).filter(|&i| bag[i] != 0.0).collect();
        assert_eq!(nonzero.len(), grams.len());
        for g in grams {
            assert!((bag[slot(g, n)] - 1.0 / 10f32.sqrt()).abs() < 1e-6, "{g}");
        }
        // no pair across the Latin word: 虎蜜 is not a gram
        assert_eq!(bag[slot("虎蜜", n)], 0.0);
    }

    #[test]
    fn repeated_grams_count_and_the_bag_has_unit_length() {
        let bag = cjk(1 << 16).bag("月月");
        // 月 twice, 月月 once: (2, 1) normalized
        let (a, b) = (bag[slot("月", 1 << 16)], bag[slot("月月", 1 << 16)]);
        assert!((a - 2.0 / 5f32.sqrt()).abs() < 1e-6 && (b - 1.0 / 5f32.sqrt()).abs() < 1e-6);
        let small = cjk(64).bag("兔子在月亮上面。うさぎ 토끼");
        let norm: f32 = small.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn trigrams_of_other_words_have_slots_of_their_own() {
        let (n, m) = (1 << 16, 1 << 20);
        let both = CharBag {
            buckets: n,
            trigram_buckets: m,
        };
        let bag = both.bag("Un Lapin 兔子");
        assert_eq!(bag.len(), n + m);
        let (cjk_part, tri_part) = bag.split_at(n);
        // the CJK part is exactly the CJK-only bag: trigrams neither share nor dilute it
        assert_eq!(cjk_part, cjk(n).bag("Un Lapin 兔子").as_slice());
        let grams = ["<un", "un>", "<la", "lap", "api", "pin", "in>"];
        assert_eq!(tri_part.iter().filter(|&&x| x != 0.0).count(), grams.len());
        for g in grams {
            assert!(
                (tri_part[slot(g, m)] - 1.0 / 7f32.sqrt()).abs() < 1e-6,
                "{g}"
            );
        }
        // a Latin query: zeros in the CJK part, a unit trigram part
        let latin = both.bag("кролик");
        assert!(latin[..n].iter().all(|&x| x == 0.0));
        let norm: f32 = latin[n..].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn text_without_cjk_gives_zeros() {
        for t in ["a rabbit", "кролик", "lapin à la lune", "🐰", ""] {
            assert!(cjk(4096).bag(t).iter().all(|&x| x == 0.0), "{t:?}");
        }
        assert!(CharBag::default().bag("兔子").is_empty());
        assert!(is_cjk('兔') && is_cjk('う') && is_cjk('토') && !is_cjk('a') && !is_cjk('。'));
    }
}
