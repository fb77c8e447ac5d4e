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
//! the bag also takes every other word's character trigrams (`trigrams`, measured as the
//! next step for Cyrillic, Arabic and Latin scripts in models/README.md). The
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
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The L2-normalized bag of `text`'s CJK characters and adjacent pairs in `buckets` slots,
/// plus (`trigrams`) the character trigrams of every other word, lower-cased, with `<` and
/// `>` at its ends (fastText's subwords), hashed into the same slots.
pub fn char_bag(text: &str, buckets: usize, trigrams: bool) -> Vec<f32> {
    let mut bag = vec![0f32; buckets];
    if buckets == 0 {
        return bag;
    }
    let mut add = |s: &str| bag[(fnv1a(s.as_bytes()) % buckets as u64) as usize] += 1.0;
    if trigrams {
        for word in text.split(|c: char| !c.is_alphabetic() || is_cjk(c)) {
            if word.is_empty() {
                continue;
            }
            let w: Vec<char> = std::iter::once('<')
                .chain(word.chars().flat_map(char::to_lowercase))
                .chain(std::iter::once('>'))
                .collect();
            for t in w.windows(3) {
                add(&t.iter().collect::<String>());
            }
        }
    }
    let mut prev: Option<(usize, char)> = None;
    for (i, c) in text.char_indices() {
        if !is_cjk(c) {
            prev = None;
            continue;
        }
        add(&text[i..i + c.len_utf8()]);
        if let Some((j, _)) = prev {
            add(&text[j..i + c.len_utf8()]);
        }
        prev = Some((i, c));
    }
    let norm = bag.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        bag.iter_mut().for_each(|x| *x /= norm);
    }
    bag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(s: &str, buckets: usize) -> usize {
        (fnv1a(s.as_bytes()) % buckets as u64) as usize
    }

    #[test]
    fn counts_characters_and_adjacent_pairs_of_each_run() {
        let n = 1 << 20; // wide enough that these few grams do not collide
        let bag = char_bag("一只老虎 and 蜜蜂", n, false);
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
        let bag = char_bag("月月", 1 << 16, false);
        // 月 twice, 月月 once: (2, 1) normalized
        let (a, b) = (bag[slot("月", 1 << 16)], bag[slot("月月", 1 << 16)]);
        assert!((a - 2.0 / 5f32.sqrt()).abs() < 1e-6 && (b - 1.0 / 5f32.sqrt()).abs() < 1e-6);
        let small = char_bag("兔子在月亮上面。うさぎ 토끼", 64, false);
        let norm: f32 = small.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn trigrams_of_other_words_join_the_bag() {
        let n = 1 << 20;
        let bag = char_bag("Un Lapin 兔", n, true);
        let grams = ["<un", "un>", "<la", "lap", "api", "pin", "in>", "兔"];
        let nonzero = bag.iter().filter(|&&x| x != 0.0).count();
        assert_eq!(nonzero, grams.len());
        for g in grams {
            assert!(bag[slot(g, n)] > 0.0, "{g}");
        }
        // without trigrams: the CJK bag alone
        let cjk_only = char_bag("Un Lapin 兔", n, false);
        assert_eq!(cjk_only.iter().filter(|&&x| x != 0.0).count(), 1);
        assert_eq!(cjk_only[slot("兔", n)], 1.0);
    }

    #[test]
    fn text_without_cjk_gives_zeros() {
        for t in ["a rabbit", "кролик", "lapin à la lune", "🐰", ""] {
            assert!(char_bag(t, 4096, false).iter().all(|&x| x == 0.0), "{t:?}");
        }
        assert!(char_bag("兔子", 0, false).is_empty());
        assert!(is_cjk('兔') && is_cjk('う') && is_cjk('토') && !is_cjk('a') && !is_cjk('。'));
    }
}
