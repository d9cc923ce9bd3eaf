//! Query strings and form bodies, parsed and encoded the way Go's `net/url`
//! does: the signing helper builds its canonical query with
//! `url.Values.Encode()`, so the verifier must reproduce it byte for byte.

/// Decoded `key=value` pairs in order (Go `url.ParseQuery`: `+` is a space,
/// `%XX` is a byte; a pair with a bad escape is dropped, as Go drops it).
pub fn parse(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((unescape(k)?, unescape(v)?))
        })
        .collect()
}

/// The first value of `key`, if any.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Go `url.QueryUnescape`.
pub fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Go `url.QueryEscape`: unreserved bytes stay, a space becomes `+`, the
/// rest `%XX` (uppercase).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The SigV4-X509 canonical query: Go `url.Values.Encode()` of the parsed
/// query (sorted by key, a key's values in their order) with `+` → `%20`.
pub fn canonical(raw: &str) -> String {
    let mut pairs = parse(raw);
    // Stable, so one key's values keep their order as in Go's map of slices.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
        .replace('+', "%20")
}

/// Percent-decoding only (no `+` rule), for URL-encoded IAM policy documents.
pub fn percent_decode(s: &str) -> Option<String> {
    unescape(&s.replace('+', "%2B"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_and_escapes_like_go() {
        let raw = "trustAnchorArn=arn%3Aaws%3Arolesanywhere%3Aeu-west-1%3A123456789012%3Atrust-anchor%2Fa\
                   &profileArn=arn:aws:rolesanywhere:eu-west-1:123456789012:profile/b\
                   &roleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fr";
        assert_eq!(
            canonical(raw),
            "profileArn=arn%3Aaws%3Arolesanywhere%3Aeu-west-1%3A123456789012%3Aprofile%2Fb\
             &roleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fr\
             &trustAnchorArn=arn%3Aaws%3Arolesanywhere%3Aeu-west-1%3A123456789012%3Atrust-anchor%2Fa"
        );
    }

    #[test]
    fn spaces_become_percent_20_and_plus_stays_a_plus_sign() {
        // `+` in the raw query is a space (→ %20); an escaped plus is a real plus (→ %2B).
        assert_eq!(canonical("b=x+y&a=1%2B1"), "a=1%2B1&b=x%20y");
        assert_eq!(canonical("k=a%20b"), "k=a%20b");
        assert_eq!(canonical("k=~-_.*"), "k=~-_.%2A");
    }

    #[test]
    fn repeated_keys_keep_their_order_and_empty_query_is_empty() {
        assert_eq!(canonical("b=2&a=z&b=1"), "a=z&b=2&b=1");
        assert_eq!(canonical(""), "");
        assert_eq!(canonical("flag"), "flag=");
    }

    #[test]
    fn bad_escapes_are_dropped_like_go() {
        assert_eq!(parse("a=%zz&b=1"), vec![("b".into(), "1".into())]);
    }

    #[test]
    fn percent_decode_keeps_plus() {
        assert_eq!(
            percent_decode("%7B%22a%22%3A%22x+y%22%7D").unwrap(),
            r#"{"a":"x+y"}"#
        );
    }
}
