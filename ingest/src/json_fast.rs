//! The common shape of a JSON point, read without arrow-json's general decoder.
//!
//! Nearly every record on a metrics topic looks like
//! `{"ts":1700000000000,"name":"cpu","labels":{"host":"a"},"value":0.5}`: the four fields once
//! each, in any order, an integer timestamp in milliseconds, strings without escapes, a number.
//! Such a batch is read here straight into the wire rows, without arrow-json's tape: decoding a
//! batch to points (series keys included) takes 25-30% less time (docs/BENCHMARKS.md). Anything
//! else in a batch (an escape, an RFC 3339 timestamp, another field, a null, a syntax error)
//! sends the whole batch back to arrow-json's decoder, which gives every answer, and every
//! rejection reason, as before; such a batch pays for the attempt up to that record. This path
//! only ever accepts a batch whose rows that decoder would decode to the same values (a property
//! test holds it to that).

use crate::json::{RawRecord, WireRows};

/// The wire rows of `records` if every one of them has the common shape; `None` otherwise.
pub(crate) fn decode_common<'a>(records: &[&'a RawRecord]) -> Option<WireRows<'a>> {
    let mut rows = WireRows::new();
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(8);
    for &r in records {
        let p = parse(r.payload.as_deref()?, &mut labels)?;
        rows.push(p.ts, p.name, labels.iter().copied(), p.value, r).ok()?;
    }
    Some(rows)
}

struct Point<'a> {
    ts: i64,
    name: &'a str,
    value: f64,
}

/// One record of the common shape; its labels, in order, into `labels`.
fn parse<'a>(b: &'a [u8], labels: &mut Vec<(&'a str, &'a str)>) -> Option<Point<'a>> {
    labels.clear();
    // UTF-8 is checked once for the whole record; strings are then cut out of it.
    let s = std::str::from_utf8(b).ok()?;
    let mut c = Cursor { s, i: 0 };
    let (mut ts, mut name, mut value, mut seen_labels) = (None, None, None, false);
    c.eat(b'{')?;
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        match key {
            "ts" if ts.is_none() => ts = Some(c.integer()?),
            "name" if name.is_none() => name = Some(c.string()?),
            "value" if value.is_none() => value = Some(c.float()?),
            "labels" if !seen_labels => {
                seen_labels = true;
                c.eat(b'{')?;
                if c.peek()? == b'}' {
                    c.i += 1;
                } else {
                    loop {
                        let k = c.string()?;
                        c.eat(b':')?;
                        labels.push((k, c.string()?));
                        match c.next()? {
                            b',' => {}
                            b'}' => break,
                            _ => return None,
                        }
                    }
                }
            }
            _ => return None,
        }
        match c.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    c.ws();
    if c.i != s.len() || !seen_labels {
        return None;
    }
    Some(Point { ts: ts?, name: name?, value: value? })
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn ws(&mut self) {
        let b = self.bytes();
        while self.i < b.len() && matches!(b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string without escapes or control characters, as UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.bytes()[self.i..];
        let end = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        let start = self.i;
        self.i += end + 1;
        // Both ends are next to an ASCII quote, so on character boundaries.
        self.s.get(start..start + end)
    }

    /// The text of a number in JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    /// Returns it and whether it is an integer (no fraction, no exponent).
    fn number(&mut self) -> Option<(&'a str, bool)> {
        self.ws();
        let b = self.bytes();
        let start = self.i;
        let mut i = start;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - s
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return None,
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return None;
            }
            integer = false;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return None;
            }
            integer = false;
        }
        self.i = i;
        Some((self.s.get(start..i)?, integer))
    }

    fn integer(&mut self) -> Option<i64> {
        match self.number()? {
            (text, true) => text.parse().ok(),
            _ => None,
        }
    }

    fn float(&mut self) -> Option<f64> {
        let v: f64 = self.number()?.0.parse().ok()?;
        v.is_finite().then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::TapeBatchDecoder;
    use crate::schema::wire_schema;
    use crate::source::SourcePos;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn rec(offset: i64, s: &str) -> RawRecord {
        RawRecord { payload: Some(s.as_bytes().to_vec()), key: None, pos: SourcePos { topic: Arc::from("m"), partition: 0, offset } }
    }

    /// The wire batch arrow-json's decoder makes of `records` (`None` if it rejects any).
    fn through_arrow(records: &[&RawRecord]) -> Option<arrow::array::RecordBatch> {
        let mut d = TapeBatchDecoder::new(wire_schema(), false);
        let mut rejected = Vec::new();
        let (batch, _) = d.decode_records(records, &mut rejected).ok()?;
        rejected.is_empty().then_some(batch)
    }

    fn through_here(records: &[&RawRecord]) -> Option<arrow::array::RecordBatch> {
        decode_common(records).map(|rows| rows.into_wire().unwrap())
    }

    #[test]
    fn the_common_shape_decodes_as_arrow_json_decodes_it() {
        let texts = [
            r#"{"ts":1700000000000,"name":"cpu","labels":{"host":"a","service":"s"},"value":0.5}"#,
            r#" { "value" : -1.25e3 , "labels" : { } , "name" : "mem" , "ts" : -5 } "#,
            r#"{"labels":{"z":"1","a":"ünï"},"ts":0,"value":3,"name":"é"}"#,
            "{\"ts\":1,\n\"name\":\"n\",\t\"labels\":{\"k\":\"\"},\"value\":1E-7}",
        ];
        let records: Vec<RawRecord> = texts.iter().enumerate().map(|(i, t)| rec(i as i64, t)).collect();
        let refs: Vec<&RawRecord> = records.iter().collect();
        let here = through_here(&refs).expect("all of the common shape");
        assert_eq!(Some(here), through_arrow(&refs));
    }

    #[test]
    fn anything_else_is_left_to_arrow_json() {
        for text in [
            r#"{"ts":"2024-01-01T00:00:00Z","name":"cpu","labels":{},"value":1}"#,
            r#"{"ts":1,"name":"c\"pu","labels":{},"value":1}"#,
            r#"{"ts":1,"name":"cpu","labels":{"h":"a\nb"},"value":1}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":null}"#,
            r#"{"ts":1,"name":"cpu","labels":{"h":null},"value":1}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":1,"unit":"s"}"#,
            r#"{"ts":1,"name":"cpu","value":1}"#,
            r#"{"ts":1,"ts":2,"name":"cpu","labels":{},"value":1}"#,
            r#"{"ts":1.5,"name":"cpu","labels":{},"value":1}"#,
            r#"{"ts":99999999999999999999,"name":"cpu","labels":{},"value":1}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":01}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":.5}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":1.}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":+1}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":1e999}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":1} {}"#,
            r#"{"ts":1,"name":"cpu","labels":{},"value":1"#,
            r#"{"ts":1,"name":"cpu","labels":{,},"value":1}"#,
            r#"[1]"#,
        ] {
            let r = rec(0, text);
            assert!(through_here(&[&r]).is_none(), "taken by the common path: {text}");
        }
        let bad_utf8 = RawRecord { payload: Some(b"{\"ts\":1,\"name\":\"\xff\",\"labels\":{},\"value\":1}".to_vec()), ..rec(0, "") };
        assert!(through_here(&[&bad_utf8]).is_none());
        let empty = RawRecord { payload: None, ..rec(0, "") };
        assert!(through_here(&[&empty]).is_none());
    }

    fn label() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z_]{1,6}").unwrap()
    }

    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v}")),
            any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:e}")),
            any::<i32>().prop_map(|v| v.to_string()),
            (0u32..1000, 0u32..1000, -30i32..30).prop_map(|(a, b, e)| format!("{a}.{b:03}E{e:+}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Every batch the common path takes, it decodes to the batch arrow-json makes of it.
        #[test]
        fn the_common_path_agrees_with_arrow_json(
            points in proptest::collection::vec(
                (any::<i64>(), label(), proptest::collection::vec((label(), label()), 0..4), value_text(), any::<bool>(), 0usize..4),
                1..20,
            )
        ) {
            let texts: Vec<String> = points.iter().map(|(ts, name, labels, value, spaced, rot)| {
                let sp = if *spaced { " " } else { "" };
                let labels = labels.iter().map(|(k, v)| format!("\"{k}\"{sp}:{sp}\"{v}\"")).collect::<Vec<_>>().join(&format!(",{sp}"));
                let mut fields = [
                    format!("\"ts\":{sp}{ts}"),
                    format!("\"name\":\"{name}\""),
                    format!("\"labels\":{sp}{{{labels}}}"),
                    format!("\"value\":{value}"),
                ];
                fields.rotate_left(*rot);
                format!("{sp}{{{}}}{sp}", fields.join(&format!("{sp},")))
            }).collect();
            let records: Vec<RawRecord> = texts.iter().enumerate().map(|(i, t)| rec(i as i64, t)).collect();
            let refs: Vec<&RawRecord> = records.iter().collect();
            let here = through_here(&refs);
            prop_assert!(here.is_some(), "not taken: {texts:?}");
            prop_assert_eq!(here, through_arrow(&refs), "{:?}", texts);
        }
    }
}
