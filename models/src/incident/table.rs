//! The `incidents` table: one row per change of an incident (opened, updated, resolved), the
//! table decision policies are SQL over.

use super::*;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

/// Schema of the `incidents` table: one row per change (opened, updated, resolved). It is also
/// the table decision policies are SQL over.
pub fn incidents_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let s = |n: &str| Field::new(n, DataType::Utf8, false);
        let f = |n: &str| Field::new(n, DataType::Float64, false);
        Arc::new(Schema::new(vec![
            Field::new("time", ts_type(), false),
            s("id"),
            s("fingerprint"),
            s("state"),
            s("key"),
            s("key_label"),
            s("severity"),
            Field::new("opened_at", ts_type(), false),
            Field::new("resolved_at", ts_type(), true),
            s("origin"),
            s("origin_name"),
            Field::new("origin_host", DataType::Utf8, true),
            s("direction"),
            s("kinds"),
            s("names"),
            s("members"),
            s("rising"),
            s("falling"),
            Field::new("member_count", DataType::UInt32, false),
            Field::new("signals", DataType::UInt32, false),
            f("score"),
            f("confidence"),
            f("value"),
            f("expected"),
            f("z"),
            Field::new("capacity_series", DataType::Utf8, true),
            Field::new("capacity_limit", DataType::Float64, true),
            Field::new("capacity_expected_at", ts_type(), true),
            Field::new("capacity_earliest", ts_type(), true),
            Field::new("capacity_latest", ts_type(), true),
            s("explanation"),
        ]))
    })
    .clone()
}

/// Incidents as rows of the `incidents` table.
pub fn incidents_batch(incidents: &[Incident]) -> Result<RecordBatch> {
    let n = incidents.len();
    let ts = || TimestampMillisecondBuilder::with_capacity(n).with_timezone("+00:00");
    let (mut time, mut opened, mut resolved) = (ts(), ts(), ts());
    let (mut cap_exp, mut cap_early, mut cap_late) = (ts(), ts(), ts());
    let mut text: Vec<StringBuilder> = (0..16).map(|_| StringBuilder::new()).collect();
    let mut host = StringBuilder::new();
    let mut cap_series = StringBuilder::new();
    let (mut member_count, mut signals) = (UInt32Builder::new(), UInt32Builder::new());
    let mut nums: Vec<Float64Builder> = (0..5).map(|_| Float64Builder::new()).collect();
    let mut cap_limit = Float64Builder::new();
    for i in incidents {
        time.append_value(i.updated_ms);
        opened.append_value(i.opened_ms);
        resolved.append_option(i.resolved_ms);
        let names: BTreeSet<&str> = i.members.values().map(|m| m.name.as_str()).collect();
        let origin_name = parse_series_key(&i.origin).0;
        let members: Vec<&str> = i.members.keys().map(String::as_str).collect();
        let kinds: Vec<&str> = i.kinds.iter().map(String::as_str).collect();
        let strongest = &i.strongest;
        for (b, v) in text.iter_mut().zip([
            i.id.as_str(),
            &i.fingerprint,
            &i.state,
            &i.key,
            &i.key_label,
            &i.severity,
            &i.origin,
            &origin_name,
            i.direction(),
            &kinds.join(","),
            &names.into_iter().collect::<Vec<_>>().join(","),
            &members.join(","),
            &i.moving(true),
            &i.moving(false),
            &i.first.explanation,
        ]) {
            b.append_value(v);
        }
        let labels = i.origin_labels();
        host.append_option(labels.get("host").or_else(|| labels.get("host.name")).or_else(|| labels.get("k8s.pod.name")));
        member_count.append_value(i.members.len() as u32);
        signals.append_value(i.signals);
        for (b, v) in nums.iter_mut().zip([strongest.score, i.first.confidence.max(strongest.confidence), i.first.value, i.first.expected, i.first.z]) {
            b.append_value(v);
        }
        match &i.capacity {
            Some((s, c)) => {
                cap_series.append_value(s);
                cap_limit.append_value(c.limit);
                cap_exp.append_option(c.expected_ms);
                cap_early.append_value(c.earliest_ms);
                cap_late.append_option(c.latest_ms);
            }
            None => {
                cap_series.append_null();
                cap_limit.append_null();
                cap_exp.append_null();
                cap_early.append_null();
                cap_late.append_null();
            }
        }
    }
    let mut t: Vec<ArrayRef> = text.into_iter().take(15).map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
    let mut nums: Vec<ArrayRef> = nums.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
    let take = |v: &mut Vec<ArrayRef>| v.remove(0);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        take(&mut t), // id
        take(&mut t), // fingerprint
        take(&mut t), // state
        take(&mut t), // key
        take(&mut t), // key_label
        take(&mut t), // severity
        Arc::new(opened.finish()),
        Arc::new(resolved.finish()),
        take(&mut t), // origin
        take(&mut t), // origin_name
        Arc::new(host.finish()),
        take(&mut t), // direction
        take(&mut t), // kinds
        take(&mut t), // names
        take(&mut t), // members
        take(&mut t), // rising
        take(&mut t), // falling
        Arc::new(member_count.finish()),
        Arc::new(signals.finish()),
        take(&mut nums),
        take(&mut nums),
        take(&mut nums),
        take(&mut nums),
        take(&mut nums),
        Arc::new(cap_series.finish()),
        Arc::new(cap_limit.finish()),
        Arc::new(cap_exp.finish()),
        Arc::new(cap_early.finish()),
        Arc::new(cap_late.finish()),
        take(&mut t), // explanation
    ];
    Ok(RecordBatch::try_new(incidents_schema(), cols)?)
}
