//! The log output on stderr: human-readable text (the default; coloured on a terminal only) or,
//! with `--log-format json`,
//! one JSON object per line: `timestamp`, `level`, `target`, `message`, the event's other
//! fields, and `spans` (outermost first, each with its `name` and fields).
//!
//! The JSON form is written by hand (a `tracing_subscriber` event and field formatter over
//! `serde_json`) rather than with tracing-subscriber's `json` feature, which would add
//! `tracing-serde` for a few dozen lines.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber: `RUST_LOG` filters (default `codestorage=info,warn`), output
/// goes to stderr in `format`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "codestorage=info,warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: log files and journald get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonFormat)
            .init(),
    }
}

/// Collects fields into a JSON map.
struct Collect<'a>(&'a mut Map<String, Value>);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

/// Span fields, stored as JSON object text.
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut Collect(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map = match serde_json::from_str::<Value>(&current.fields) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        fields.record(&mut Collect(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// Events as one JSON object per line.
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut Collect(&mut fields));
        let message = fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        // The fixed keys first, in this order; then the event's fields; then the spans.
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        line.push_str(&Value::String(timestamp()).to_string());
        line.push_str(",\"level\":");
        line.push_str(&Value::String(meta.level().to_string()).to_string());
        line.push_str(",\"target\":");
        line.push_str(&Value::String(meta.target().to_owned()).to_string());
        line.push_str(",\"message\":");
        line.push_str(&message.to_string());
        const FIXED: [&str; 5] = ["timestamp", "level", "target", "message", "spans"];
        for (k, v) in fields.iter().filter(|(k, _)| !FIXED.contains(&k.as_str())) {
            line.push(',');
            line.push_str(&Value::String(k.clone()).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                let mut s = Map::new();
                s.insert("name".into(), Value::String(span.name().to_owned()));
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&f.fields)
                {
                    for (k, v) in m {
                        s.entry(k).or_insert(v);
                    }
                }
                spans.push(Value::Object(s));
            }
            if !spans.is_empty() {
                line.push_str(",\"spans\":");
                line.push_str(&Value::Array(spans).to_string());
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Now as RFC 3339 with milliseconds, UTC.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = crate::time::rfc3339(now.as_secs());
    format!("{}.{:03}Z", base.trim_end_matches('Z'), now.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_end_in_z() {
        let t = timestamp();
        assert_eq!(t.len(), "2026-11-28T09:30:00.123Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }
}
