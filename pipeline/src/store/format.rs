//! The bytes of a checkpoint on storage: ids, the data file and the manifest file.
//!
//! A checkpoint `{id}` is two objects in the store's `checkpoints/` folder:
//!
//! - `{id}.data`: the sections' bytes, concatenated in the order they were given;
//! - `{id}.manifest`: the JSON of [`Manifest`], a newline, and the xxh3-64 of that JSON as 16
//!   lowercase hex digits (and a final newline). The manifest names every section with its offset,
//!   length and xxh3-64, and gives the length and xxh3-64 of the whole data file.
//!
//! Nothing here does I/O: the functions build and check bytes, so that every way a checkpoint can
//! be damaged is decided in one place.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use xxhash_rust::xxh3::xxh3_64;

use super::{Manifest, Section, SectionEntry, StoreError, FORMAT_VERSION};

/// File name suffix of a manifest object.
pub(super) const MANIFEST_SUFFIX: &str = ".manifest";
/// File name suffix of a data object.
pub(super) const DATA_SUFFIX: &str = ".data";
/// Longest member name kept in an id (the manifest keeps the full name).
const MAX_MEMBER_IN_ID: usize = 64;

/// The last `(epoch ms, sequence)` handed out by [`next_id`] in this process.
static LAST_ID: Mutex<(i64, u32)> = Mutex::new((i64::MIN, 0));

/// A new checkpoint id for `member` (already [`sanitise_member`]d) at wall-clock time `now_ms`:
/// `{epoch ms, 15 digits}-{sequence, 4 digits}-{member}`.
///
/// The sequence counts the ids this process hands out within one millisecond, so two writes in the
/// same millisecond get distinct, ordered ids. Ids never go backwards within a process, even if
/// the wall clock does (the previous millisecond is reused with the next sequence number). Both
/// numbers are fixed-width, so ids sort chronologically as plain strings.
pub(super) fn next_id(now_ms: i64, member: &str) -> String {
    let (ms, seq) = {
        let mut last = LAST_ID.lock().unwrap_or_else(PoisonError::into_inner);
        let (last_ms, last_seq) = *last;
        let next = if now_ms > last_ms {
            (now_ms, 0)
        } else if last_seq < 9_999 {
            (last_ms, last_seq + 1)
        } else {
            (last_ms + 1, 0)
        };
        *last = next;
        next
    };
    format!("{:015}-{:04}-{}", ms.max(0), seq, member)
}

/// `member` reduced to characters that are safe in an object name on every store and file
/// system (`A-Z a-z 0-9 . _ -`; anything else becomes `_`), at most 64 characters, never empty.
pub(super) fn sanitise_member(member: &str) -> String {
    let mut out: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_MEMBER_IN_ID)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The data file of `sections` (concatenated) and the manifest entry of each section.
///
/// Two sections with the same name, or a section without a name, are refused.
pub(super) fn build_data(sections: &[Section]) -> Result<(Vec<u8>, Vec<SectionEntry>), StoreError> {
    let mut seen = HashSet::with_capacity(sections.len());
    for s in sections {
        if s.name.is_empty() {
            return Err(StoreError::InvalidSection {
                message: "a section has an empty name".into(),
            });
        }
        if !seen.insert(s.name.as_str()) {
            return Err(StoreError::InvalidSection {
                message: format!("section `{}` is given twice", s.name),
            });
        }
    }
    let total = sections.iter().map(|s| s.bytes.len()).sum();
    let mut data = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(sections.len());
    for s in sections {
        entries.push(SectionEntry {
            name: s.name.clone(),
            offset: data.len() as u64,
            len: s.bytes.len() as u64,
            checksum: xxh3_64(&s.bytes),
        });
        data.extend_from_slice(&s.bytes);
    }
    Ok((data, entries))
}

/// The manifest file: JSON, newline, xxh3-64 of the JSON in hex, newline.
pub(super) fn encode_manifest(manifest: &Manifest) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(manifest)?;
    let checksum = xxh3_64(&out);
    out.extend_from_slice(format!("\n{checksum:016x}\n").as_bytes());
    Ok(out)
}

/// What a manifest file turned out to be.
#[derive(Debug)]
pub(super) enum Decoded {
    /// A manifest this build reads, consistent with its object name.
    Manifest(Manifest),
    /// An intact manifest in a format this build does not read.
    Incompatible {
        /// Its `format_version`.
        found: u32,
    },
    /// Damaged or not a manifest: why.
    Corrupt(String),
}

/// Splits a manifest file into its JSON and checks the JSON against its checksum line.
fn checked_json(bytes: &[u8]) -> Result<&[u8], String> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let Some(newline) = body.iter().rposition(|&b| b == b'\n') else {
        return Err(format!(
            "no checksum line (the file is {} bytes; truncated?)",
            bytes.len()
        ));
    };
    let (json, line) = (&body[..newline], &body[newline + 1..]);
    let stored = std::str::from_utf8(line)
        .ok()
        .filter(|s| s.len() == 16)
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| "the checksum line is not 16 hex digits (truncated?)".to_string())?;
    let computed = xxh3_64(json);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: the file says {stored:016x}, its JSON hashes to {computed:016x}"
        ));
    }
    Ok(json)
}

/// Decodes the manifest file stored as checkpoint `id`.
///
/// The checksum is checked first, then the format version (so a newer format is recognised even
/// if its fields changed), then the fields, then that the manifest is consistent: it names the id
/// it is stored under, a data object in the same folder, and sections that lie inside the data.
pub(super) fn decode_manifest(id: &str, bytes: &[u8]) -> Decoded {
    let json = match checked_json(bytes) {
        Ok(json) => json,
        Err(reason) => return Decoded::Corrupt(reason),
    };
    let value: serde_json::Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(e) => return Decoded::Corrupt(format!("not JSON: {e}")),
    };
    let Some(version) = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    else {
        return Decoded::Corrupt("no format_version".into());
    };
    let Ok(version) = u32::try_from(version) else {
        return Decoded::Corrupt(format!("format_version {version} is out of range"));
    };
    if version == 0 || version > FORMAT_VERSION {
        return Decoded::Incompatible { found: version };
    }
    let manifest: Manifest = match serde_json::from_value(value) {
        Ok(m) => m,
        Err(e) => return Decoded::Corrupt(format!("not a format {version} manifest: {e}")),
    };
    if manifest.id != id {
        return Decoded::Corrupt(format!(
            "it describes checkpoint {} but is stored as {id}",
            manifest.id
        ));
    }
    if manifest.data.is_empty() || manifest.data.contains('/') {
        return Decoded::Corrupt(format!("invalid data object name `{}`", manifest.data));
    }
    for s in &manifest.sections {
        if s.offset
            .checked_add(s.len)
            .is_none_or(|end| end > manifest.data_len)
        {
            return Decoded::Corrupt(format!(
                "section `{}` ({} bytes at {}) lies outside the {}-byte data",
                s.name, s.len, s.offset, manifest.data_len
            ));
        }
    }
    Decoded::Manifest(manifest)
}

/// The section names listed in a manifest file, read as loosely as possible (any format version),
/// for retention. `Ok(names)` for an intact manifest; `Err(())` if the file is damaged or lists
/// no readable section names; an intact manifest in an unknown shape gives `Ok(None)` (unknown:
/// keep it).
pub(super) fn section_names_loose(bytes: &[u8]) -> Result<Option<Vec<String>>, ()> {
    let json = checked_json(bytes).map_err(|_| ())?;
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|_| ())?;
    let Some(sections) = value.get("sections").and_then(serde_json::Value::as_array) else {
        return Ok(None);
    };
    let names: Option<Vec<String>> = sections
        .iter()
        .map(|s| {
            s.get("name")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        })
        .collect();
    Ok(names)
}

/// Checks a data file against its manifest: length, whole-file checksum, every section's checksum.
pub(super) fn verify_data(manifest: &Manifest, data: &[u8]) -> Result<(), String> {
    if data.len() as u64 != manifest.data_len {
        return Err(format!(
            "the data is {} bytes, the manifest says {} (truncated?)",
            data.len(),
            manifest.data_len
        ));
    }
    let computed = xxh3_64(data);
    if computed != manifest.data_checksum {
        return Err(format!(
            "data checksum mismatch: the manifest says {:016x}, the data hashes to {computed:016x}",
            manifest.data_checksum
        ));
    }
    for s in &manifest.sections {
        let bytes = section_slice(s, data)
            .ok_or_else(|| format!("section `{}` lies outside the data", s.name))?;
        let computed = xxh3_64(bytes);
        if computed != s.checksum {
            return Err(format!(
                "section `{}` checksum mismatch: the manifest says {:016x}, its bytes hash to {computed:016x}",
                s.name, s.checksum
            ));
        }
    }
    Ok(())
}

/// The bytes of section `entry` in `data`, if they lie inside it.
pub(super) fn section_slice<'a>(entry: &SectionEntry, data: &'a [u8]) -> Option<&'a [u8]> {
    let start = usize::try_from(entry.offset).ok()?;
    let end = start.checked_add(usize::try_from(entry.len).ok()?)?;
    data.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(id: &str, sections: &[Section]) -> (Manifest, Vec<u8>) {
        let (data, entries) = build_data(sections).expect("valid sections");
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            member: "m".into(),
            created_ms: 1,
            data: format!("{id}{DATA_SUFFIX}"),
            data_len: data.len() as u64,
            data_checksum: xxh3_64(&data),
            sections: entries,
            meta: serde_json::json!({"k": 1}),
        };
        (manifest, data)
    }

    fn sections() -> Vec<Section> {
        vec![
            Section {
                name: "global".into(),
                bytes: b"hello".to_vec(),
            },
            Section {
                name: "partition/m/0".into(),
                bytes: vec![],
            },
            Section {
                name: "partition/m/1".into(),
                bytes: b"world!".to_vec(),
            },
        ]
    }

    #[test]
    fn ids_sort_chronologically_and_are_unique_within_one_millisecond() {
        let a = next_id(1_700_000_000_000, "m");
        let b = next_id(1_700_000_000_000, "m");
        let c = next_id(1_699_999_999_999, "m"); // clock stepped back
        let d = next_id(1_700_000_000_001, "m");
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert!(a.starts_with("001700000000000-"), "{a}");
        assert_eq!(next_id(5, "m").len(), 15 + 1 + 4 + 1 + 1);
    }

    #[test]
    fn member_names_are_sanitised_to_object_name_safe_characters() {
        assert_eq!(sanitise_member("vigil-0.host_a"), "vigil-0.host_a");
        assert_eq!(sanitise_member("a/b c#1:é"), "a_b_c_1__");
        assert_eq!(sanitise_member(""), "_");
        assert_eq!(sanitise_member(&"x".repeat(200)).len(), 64);
    }

    #[test]
    fn manifest_round_trips_and_its_sections_verify() {
        let (m, data) = manifest_for("001-0000-m", &sections());
        let bytes = encode_manifest(&m).expect("encodes");
        match decode_manifest("001-0000-m", &bytes) {
            Decoded::Manifest(back) => assert_eq!(back, m),
            other => panic!("expected a manifest, got {other:?}"),
        }
        verify_data(&m, &data).expect("data verifies");
        let s = &m.sections[2];
        assert_eq!(section_slice(s, &data), Some(&b"world!"[..]));
    }

    #[test]
    fn damaged_manifests_and_data_are_detected() {
        let (m, data) = manifest_for("001-0000-m", &sections());
        let bytes = encode_manifest(&m).expect("encodes");
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 2] {
            assert!(
                matches!(
                    decode_manifest("001-0000-m", &bytes[..cut]),
                    Decoded::Corrupt(_)
                ),
                "truncated at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x01;
        assert!(matches!(
            decode_manifest("001-0000-m", &flipped),
            Decoded::Corrupt(_)
        ));
        // Still valid JSON of a manifest, but not the one that was written: only the checksum
        // line tells.
        let text = String::from_utf8(bytes.clone()).expect("a manifest is UTF-8");
        let edited = text.replacen("\"member\":\"m\"", "\"member\":\"n\"", 1);
        assert_ne!(edited, text);
        match decode_manifest("001-0000-m", edited.as_bytes()) {
            Decoded::Corrupt(reason) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("an edited manifest must fail its checksum, got {other:?}"),
        }
        assert!(
            matches!(decode_manifest("002-0000-m", &bytes), Decoded::Corrupt(_)),
            "stored under another id"
        );
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x80;
            assert!(verify_data(&m, &d).is_err(), "flip at {i}");
        }
        assert!(verify_data(&m, &data[..data.len() - 1]).is_err());
    }

    #[test]
    fn duplicate_or_unnamed_sections_are_refused() {
        let dup = vec![
            Section {
                name: "a".into(),
                bytes: vec![1],
            },
            Section {
                name: "a".into(),
                bytes: vec![2],
            },
        ];
        assert!(matches!(
            build_data(&dup),
            Err(StoreError::InvalidSection { .. })
        ));
        let unnamed = vec![Section {
            name: String::new(),
            bytes: vec![],
        }];
        assert!(matches!(
            build_data(&unnamed),
            Err(StoreError::InvalidSection { .. })
        ));
    }

    #[test]
    fn loose_section_names_read_any_intact_manifest() {
        let (m, _) = manifest_for("001-0000-m", &sections());
        let bytes = encode_manifest(&m).expect("encodes");
        assert_eq!(
            section_names_loose(&bytes),
            Ok(Some(vec![
                "global".into(),
                "partition/m/0".into(),
                "partition/m/1".into()
            ]))
        );
        assert_eq!(section_names_loose(&bytes[..bytes.len() - 3]), Err(()));
    }
}
