//! Names (paths, texts) as text that keeps every byte: JSON and metadata take UTF-8 names as
//! they are and other bytes as `\xHH`; the lines of `.paths.txt` also escape line breaks.

use std::ffi::OsStr;

/// A name as JSON text: UTF-8 names as they are; a name with bytes that are not UTF-8 keeps
/// them as `\xHH` (and its backslashes doubled), so it is not silently altered.
pub fn display_name(name: &OsStr) -> String {
    match name.to_str() {
        Some(s) => s.to_string(),
        None => escape(name.as_encoded_bytes(), false),
    }
}

/// [`display_name`] of raw bytes.
pub(crate) fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => escape(bytes, false),
    }
}

/// One line of `.paths.txt`: backslash, newline and carriage return escaped (`\\`, `\n`,
/// `\r`) and bytes that are not UTF-8 as `\xHH`, so each line is exactly one name.
pub fn path_line(name: &OsStr) -> String {
    escape(name.as_encoded_bytes(), true)
}

/// The bytes of the name a [`path_line`] stands for.
pub fn unescape_line(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'\\' => out.push(b'\\'),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b'x' if i + 3 < b.len() => {
                    if let Some(v) =
                        std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                    out.extend_from_slice(&b[i..i + 2]);
                }
                other => out.extend_from_slice(&[b'\\', other]),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn escape(bytes: &[u8], line_breaks: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' if line_breaks => out.push_str("\\n"),
                '\r' if line_breaks => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_newlines_backslashes_and_non_utf8() {
        assert_eq!(path_line(OsStr::new("a\nb\\c\rd.jpg")), "a\\nb\\\\c\\rd.jpg");
        assert_eq!(unescape_line("a\\nb\\\\c\\rd.jpg"), b"a\nb\\c\rd.jpg");
        assert_eq!(display_name(OsStr::new("a\nb.jpg")), "a\nb.jpg");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = OsStr::from_bytes(b"caf\xe9\\x.jpg");
            assert_eq!(display_name(raw), "caf\\xe9\\\\x.jpg");
            assert_eq!(path_line(raw), "caf\\xe9\\\\x.jpg");
            assert_eq!(unescape_line(&path_line(raw)), raw.as_bytes());
            assert_eq!(display_bytes(raw.as_bytes()), display_name(raw));
        }
    }
}
