//! The reference tokenizer's text cleaning (`clean='lower'`): `ftfy.fix_text` with its default
//! settings, `html.unescape` twice, strip, whitespace collapse, strip, `lower()`.
//!
//! ftfy is a large Python library; this ports the parts of `fix_text` that change real captions:
//! terminal escapes, UTF-8 read as Windows-1252 ("mojibake", fixed sequence by sequence),
//! C1 controls, Latin ligatures, full-width characters, curly quotes, line breaks, control
//! characters and NFC. ftfy's statistical "badness" test is not ported: a run of characters is
//! only re-decoded when it forms valid multi-byte UTF-8 in Windows-1252, which real text in the
//! Latin script almost never does.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// Windows-1252 bytes 0x80..=0x9F (`None` where the code page leaves them undefined).
const CP1252_HIGH: [Option<char>; 32] = [
    Some('\u{20AC}'),
    None,
    Some('\u{201A}'),
    Some('\u{0192}'),
    Some('\u{201E}'),
    Some('\u{2026}'),
    Some('\u{2020}'),
    Some('\u{2021}'),
    Some('\u{02C6}'),
    Some('\u{2030}'),
    Some('\u{0160}'),
    Some('\u{2039}'),
    Some('\u{0152}'),
    None,
    Some('\u{017D}'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('\u{2022}'),
    Some('\u{2013}'),
    Some('\u{2014}'),
    Some('\u{02DC}'),
    Some('\u{2122}'),
    Some('\u{0161}'),
    Some('\u{203A}'),
    Some('\u{0153}'),
    None,
    Some('\u{017E}'),
    Some('\u{0178}'),
];

/// The byte a character has in ftfy's "sloppy" Windows-1252 (undefined bytes map to the C1
/// control of the same value, as Latin-1 does).
fn sloppy_cp1252_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..=0xFF).contains(&u) || (0x80..=0x9F).contains(&u) {
        return Some(u as u8);
    }
    CP1252_HIGH.iter().position(|&x| x == Some(c)).map(|i| 0x80 + i as u8)
}

/// Replace every run of characters whose sloppy-Windows-1252 bytes form valid multi-byte UTF-8
/// by the decoded characters: `cafÃ©` -> `café`, `â€œ` -> `“`.
fn fix_mojibake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let need = match sloppy_cp1252_byte(chars[i]) {
            Some(0xC2..=0xDF) => 1,
            Some(0xE0..=0xEF) => 2,
            Some(0xF0..=0xF4) => 3,
            _ => 0,
        };
        if need > 0 && i + need < chars.len() {
            let bytes: Option<Vec<u8>> = chars[i..=i + need].iter().map(|&c| sloppy_cp1252_byte(c)).collect();
            if let Some(bytes) = bytes.filter(|b| b[1..].iter().all(|x| (0x80..=0xBF).contains(x))) {
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    out.push_str(s);
                    i += need + 1;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `remove_control_chars` set: C0 controls other than tab, line feed, form feed and
/// carriage return; DEL; deprecated format characters; the byte-order mark; interlinear
/// annotation characters.
fn is_removed_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

fn fix_char(c: char, out: &mut String) {
    let u = c as u32;
    if is_removed_control(c) {
        return;
    }
    if let Some(s) = ligature(c) {
        out.push_str(s);
        return;
    }
    // Full-width and half-width forms become their NFKC equivalent when that is one character.
    if (0xFF01..=0xFFEF).contains(&u) {
        let mut n = std::iter::once(c).nfkc();
        if let (Some(x), None) = (n.next(), n.next()) {
            out.push(x);
            return;
        }
    }
    match c {
        '\u{3000}' => out.push(' '),
        '\u{02BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
        '\u{201C}'..='\u{201F}' => out.push('"'),
        // C1 controls are almost always Windows-1252 bytes decoded as Latin-1.
        '\u{0080}'..='\u{009F}' => match CP1252_HIGH[(u - 0x80) as usize] {
            Some(x) => out.push(x),
            None => out.push(c),
        },
        '\u{2028}' | '\u{2029}' => out.push('\n'),
        _ => out.push(c),
    }
}

fn html_entity_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("valid regex"))
}

fn terminal_escape_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\x1b\[[0-9;]*[a-zA-Z]").expect("valid regex"))
}

/// One pass of the ftfy steps, in ftfy's order.
fn fix_once(text: &str, unescape_html: bool) -> String {
    let mut t = if unescape_html {
        html_entity_re().replace_all(text, |m: &regex::Captures| htmlize::unescape(&m[0]).into_owned()).into_owned()
    } else {
        text.to_string()
    };
    t = terminal_escape_re().replace_all(&t, "").into_owned();
    t = fix_mojibake(&t);
    let t = t.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        fix_char(c, &mut out);
    }
    out.nfc().collect()
}

/// `ftfy.fix_text(text)` for the cases that matter to captions (see the module docs).
pub fn fix_text(text: &str) -> String {
    // ftfy leaves HTML alone in text that looks like HTML markup.
    let unescape_html = !text.contains('<');
    let mut t = text.to_string();
    for _ in 0..4 {
        let next = fix_once(&t, unescape_html);
        if next == t {
            break;
        }
        t = next;
    }
    t
}

/// The whole reference cleaner: ftfy, HTML unescaping twice, whitespace collapse, lowercase.
///
/// ```
/// use perception_encoder::tokenizer::clean;
/// assert_eq!(clean("  “Smart”  &amp;amp;\tquotes "), "\"smart\" & quotes");
/// ```
pub fn clean(text: &str) -> String {
    let t = fix_text(text);
    let t = htmlize::unescape(htmlize::unescape(t.as_str()).into_owned()).into_owned();
    let collapsed: Vec<&str> = t.split(char::is_whitespace).filter(|s| !s.is_empty()).collect();
    collapsed.join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake() {
        assert_eq!(fix_text("cafÃ© â€œquotedâ€\u{9d}"), "café \"quoted\"");
        assert_eq!(fix_text("naïve façade"), "naïve façade");
    }

    #[test]
    fn widths_ligatures_controls() {
        assert_eq!(fix_text("Ｆｕｌｌ １２３"), "Full 123");
        assert_eq!(fix_text("\u{feff}ﬁne\u{0}"), "fine");
        assert_eq!(fix_text("e\u{301}"), "é");
    }
}
