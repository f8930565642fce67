//! Rendering result batches: JSON rows, CSV, the Arrow IPC stream.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::Error;

/// The formats `POST /sql` answers in, chosen by the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (the default): an array of row objects, nulls explicit.
    Json,
    /// `text/csv`: a header line, then one line per row.
    Csv,
    /// `application/vnd.apache.arrow.stream`: the Arrow IPC stream format.
    Arrow,
}

impl Format {
    /// The format an `Accept` header asks for (JSON for none, `*/*` or anything unknown).
    pub fn from_accept(accept: Option<&str>) -> Self {
        let Some(a) = accept else { return Self::Json };
        for part in a.split(',') {
            let media = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match media.as_str() {
                "text/csv" => return Self::Csv,
                "application/vnd.apache.arrow.stream" => return Self::Arrow,
                "application/json" => return Self::Json,
                _ => {}
            }
        }
        Self::Json
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// Renders `batches` (of `schema`, which an empty result still carries).
    pub fn render(self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
        match self {
            Self::Json => json(batches),
            Self::Csv => {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone()))?;
                }
                for b in batches {
                    w.write(b)?;
                }
                Ok(w.into_inner())
            }
            Self::Arrow => {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                Ok(w.into_inner()?)
            }
        }
    }
}

/// Rows as a JSON array of objects (nulls explicit).
pub fn json(batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut w = arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow_json::writer::JsonArray>(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs)?;
    w.finish()?;
    let mut out = w.into_inner();
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}
