//! Escapes in a profile's `send`: `\r`, `\n`, `\t`, `\\` and `\xNN` (one raw byte).
//! Pure; anything else after a backslash is an error naming the escape.

/// Decodes `\r`, `\n`, `\t`, `\\` and `\xNN`; other characters are taken as
/// their UTF-8 bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let digits = hex.len() == 2 && hex.chars().all(|c| c.is_ascii_hexdigit());
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if digits => out.push(b),
                    _ => {
                        return Err(format!(
                            "has a bad escape \\x{hex}; expected two hex digits as in \\x03"
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "has an unknown escape \\{other}; expected \\r, \\n, \\t, \\\\ or \\xNN"
                ))
            }
            None => return Err("ends with a lone backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_to_bytes_and_other_text_to_utf8() {
        assert_eq!(
            unescape(r"a\r\n\t\\\x03\xff é").expect("valid"),
            b"a\r\n\t\\\x03\xff \xc3\xa9".to_vec()
        );
    }

    #[test]
    fn a_bad_escape_is_named() {
        assert!(unescape(r"\q").expect_err("bad").contains(r"\q"));
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\x+1").is_err());
        assert!(unescape("x\\").is_err());
    }
}
