//! `Config::validate`: every value checked, each error naming the key and the fix.

use super::*;

impl Config {
    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "is empty", "set it to host:port of a broker, e.g. \"localhost:9092\""));
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "is empty", "set a consumer group id, e.g. \"vigil\""));
        }
        if k.input_topics.is_empty() {
            return Err(invalid("kafka.input_topics", "lists no topic", "list the metrics topics, e.g. [\"metrics\"]"));
        }
        for (key, t) in [("kafka.dlq_topic", &k.dlq_topic), ("kafka.decisions_topic", &k.decisions_topic), ("kafka.late_topic", &k.late_topic), ("kafka.feedback_topic", &k.feedback_topic)] {
            if t.trim().is_empty() {
                return Err(invalid(key, "is empty", "name a topic"));
            }
            if k.input_topics.contains(t) {
                return Err(invalid(key, format!("`{t}` is also an input topic"), "use a topic Vigil does not read"));
            }
        }
        for (topic, format) in &k.input_formats {
            if !k.input_topics.contains(topic) {
                return Err(invalid("kafka.input_formats", format!("names topic `{topic}`, which is not in kafka.input_topics"), "add it to kafka.input_topics or remove it here"));
            }
            if !INPUT_FORMATS.contains(&format.as_str()) {
                return Err(invalid("kafka.input_formats", format!("format `{format}` for topic `{topic}` is unknown"), format!("use one of {}", INPUT_FORMATS.join(", "))));
            }
            if format == "mapped" {
                match k.mappings.get(topic) {
                    None => return Err(invalid("kafka.mappings", format!("topic `{topic}` has format \"mapped\" but no [kafka.mappings.{topic}]"), "add its mapping (time_field, name_field or name, value_fields, label_fields)")),
                    Some(m) => {
                        if let Err(e) = m.to_mapping().validate() {
                            return Err(invalid("kafka.mappings", format!("mapping of topic `{topic}`: {e}"), "fix that mapping"));
                        }
                    }
                }
            }
        }
        for topic in k.mappings.keys() {
            if k.input_formats.get(topic).map(String::as_str) != Some("mapped") {
                return Err(invalid("kafka.mappings", format!("topic `{topic}` has a mapping but its format is not \"mapped\""), format!("set kafka.input_formats.{topic} = \"mapped\" or remove the mapping")));
            }
        }
        for (topic, m) in &k.log_mappings {
            if k.input_formats.get(topic).map(String::as_str) != Some("json_logs") {
                return Err(invalid("kafka.log_mappings", format!("topic `{topic}` has a log mapping but its format is not \"json_logs\""), format!("set kafka.input_formats.{topic} = \"json_logs\" or remove the mapping")));
            }
            if let Err(e) = m.to_mapping().validate() {
                return Err(invalid("kafka.log_mappings", format!("log mapping of topic `{topic}`: {e}"), "fix that mapping"));
            }
        }
        let l = &self.logs;
        if !(l.template_similarity > 0.0 && l.template_similarity <= 1.0) {
            return Err(invalid("logs.template_similarity", format!("is {}", l.template_similarity), "use a share in (0, 1], e.g. 0.5"));
        }
        if l.max_templates < 10 || l.max_templates > 10_000_000 {
            return Err(invalid("logs.max_templates", format!("is {}", l.max_templates), "use 10 to 10000000, e.g. 10000"));
        }
        if let Some(p) = &l.signals_sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("logs.signals_sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped log signals"));
            }
        }
        if vigil_ingest::Precision::parse(&k.influx_precision).is_none() {
            return Err(invalid("kafka.influx_precision", format!("is `{}`", k.influx_precision), "use \"ns\", \"us\", \"ms\" or \"s\""));
        }
        if k.max_batch == 0 || k.max_batch > 1_000_000 {
            return Err(invalid("kafka.max_batch", format!("is {}", k.max_batch), "use a value from 1 to 1000000, e.g. 10000"));
        }
        let size = self.window.size.as_millis();
        if size == 0 {
            return Err(invalid("window.size", "is zero or below a millisecond", "use a duration such as \"10s\""));
        }
        if !self.window.size.as_nanos().is_multiple_of(1_000_000) {
            return Err(invalid("window.size", "is not a whole number of milliseconds", "use a duration such as \"10s\" or \"250ms\""));
        }
        if self.window.allowed_lag > Duration::from_secs(7 * 86_400) {
            return Err(invalid("window.allowed_lag", "is over 7 days", "windows would stay open for days; use e.g. \"5s\""));
        }
        let d = &self.detector;
        if d.feature.trim().is_empty() {
            return Err(invalid("detector.feature", "is empty", "name a DOUBLE column of the feature SQL, e.g. \"mean\""));
        }
        if d.history_windows < 3 {
            return Err(invalid("detector.history_windows", format!("is {}", d.history_windows), "use at least 3 (240 is the default)"));
        }
        if d.warmup_windows < 3 || d.warmup_windows > d.history_windows {
            return Err(invalid(
                "detector.warmup_windows",
                format!("is {} with history_windows = {}", d.warmup_windows, d.history_windows),
                "use a value from 3 to detector.history_windows (20 is the default)",
            ));
        }
        if d.seasons == 0 || d.seasons > 10 {
            return Err(invalid("detector.seasons", format!("is {}", d.seasons), "use 1 to 10 (3 is the default)"));
        }
        if d.refractory_windows > vigil_models::MAX_REFRACTORY_WINDOWS {
            return Err(invalid(
                "detector.refractory_windows",
                format!("is {}", d.refractory_windows),
                format!("use at most {} (120 is the default)", vigil_models::MAX_REFRACTORY_WINDOWS),
            ));
        }
        if d.shift_windows < 2 || d.shift_windows >= d.history_windows {
            return Err(invalid(
                "detector.shift_windows",
                format!("is {} with history_windows = {}", d.shift_windows, d.history_windows),
                "use a value from 2 to below detector.history_windows (24 is the default)",
            ));
        }
        if d.calibration_windows < 20 {
            return Err(invalid("detector.calibration_windows", format!("is {}", d.calibration_windows), "use at least 20 (8000 is the default)"));
        }
        if !(d.anomaly_threshold > 0.0 && d.anomaly_threshold < 1.0) {
            return Err(invalid("detector.anomaly_threshold", format!("is {}", d.anomaly_threshold), "use a score between 0 and 1, e.g. 0.99"));
        }
        let t = self.decisions.threshold;
        if !(t > 0.0 && t <= 1.0) || t < d.anomaly_threshold {
            return Err(invalid(
                "decisions.threshold",
                format!("is {t} with detector.anomaly_threshold = {}", d.anomaly_threshold),
                "use a score in (0, 1] not below detector.anomaly_threshold, e.g. 0.999",
            ));
        }
        let fl = &self.fleet;
        if !(fl.sensitivity > 0.0 && fl.sensitivity < 1.0) {
            return Err(invalid("fleet.sensitivity", format!("is {}", fl.sensitivity), "use a number between 0 and 1 (exclusive), e.g. 0.5"));
        }
        if fl.windows < 2 || fl.windows > 10_000 {
            return Err(invalid("fleet.windows", format!("is {}", fl.windows), "use 2 to 10000 (30 is the default)"));
        }
        if fl.enabled && fl.member_labels.is_empty() {
            return Err(invalid("fleet.member_labels", "is empty", "name the label that tells members apart, e.g. [\"host\"]"));
        }
        if !(fl.min_deviation.is_finite() && fl.min_deviation >= 0.0) {
            return Err(invalid("fleet.min_deviation", format!("is {}", fl.min_deviation), "use a number of robust standard deviations, e.g. 3"));
        }
        let inc = &self.incidents;
        if inc.resolve_after.is_zero() {
            return Err(invalid("incidents.resolve_after", "is 0", "use how long every member must be quiet before an incident resolves, e.g. 10m"));
        }
        if inc.correlate_by.iter().any(|l| l.trim().is_empty()) {
            return Err(invalid("incidents.correlate_by", "has an empty label", "list label names, e.g. [\"service\", \"service.name\"]"));
        }
        if inc.max_open == 0 {
            return Err(invalid("incidents.max_open", "is 0", "use the most open incidents to hold, e.g. 10000"));
        }
        let md = self.decisions.min_deviation;
        if !(md.is_finite() && md >= 0.0) {
            return Err(invalid("decisions.min_deviation", format!("is {md}"), "use a number of robust standard deviations, e.g. 8"));
        }
        let f = &self.forecast;
        let w = self.window.size;
        for name in f.limits.keys() {
            if !f.metrics.contains(name) {
                return Err(invalid("forecast.limits", format!("has a limit for `{name}`, which is not in forecast.metrics"), format!("add \"{name}\" to forecast.metrics or remove its limit")));
            }
        }
        if let Some((name, v)) = f.limits.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid("forecast.limits", format!("limit of `{name}` is {v}"), "use a finite number"));
        }
        if f.horizon < w || f.horizon > w * 100_000 {
            return Err(invalid("forecast.horizon", format!("is {:?} with window.size = {w:?}", f.horizon), "use at least one window and at most 100000 windows, e.g. \"30m\""));
        }
        if f.history < w * 8 || f.history > w * 1_000_000 {
            return Err(invalid("forecast.history", format!("is {:?} with window.size = {w:?}", f.history), "keep 8 to 1000000 windows, e.g. \"12h\""));
        }
        if f.refit_every < w {
            return Err(invalid("forecast.refit_every", format!("is {:?}, shorter than window.size", f.refit_every), "refit at most once per window, e.g. \"5m\""));
        }
        if f.max_period < w * 4 {
            return Err(invalid("forecast.max_period", format!("is {:?}, under four windows", f.max_period), "use e.g. \"1d\""));
        }
        let c = &self.checkpoint;
        if c.enabled {
            if c.url.trim().is_empty() {
                return Err(invalid("checkpoint.url", "is empty", "name a directory (e.g. \"/var/lib/vigil\") or a bucket (\"s3://bucket/vigil\"), or set checkpoint.enabled = false"));
            }
            if c.interval < Duration::from_secs(1) {
                return Err(invalid("checkpoint.interval", "is under a second", "use a duration such as \"30s\""));
            }
            if c.keep == 0 {
                return Err(invalid("checkpoint.keep", "is 0", "keep at least 1 (3 lets a corrupt newest one fall back to an older one)"));
            }
            if !(c.url.starts_with("s3://") || c.url.starts_with("file://") || !c.url.contains("://")) {
                return Err(invalid("checkpoint.url", format!("`{}` is neither a directory nor s3://bucket/prefix", c.url), "use a path, file:///abs/path or s3://bucket/prefix"));
            }
        }
        if self.shutdown.grace < Duration::from_millis(100) {
            return Err(invalid("shutdown.grace", "is under 100 ms", "give the final checkpoint time, e.g. \"20s\""));
        }
        if self.retention.max_rows == 0 {
            return Err(invalid("retention.max_rows", "is 0", "keep at least one row, e.g. 1000000"));
        }
        if let Some(p) = &self.features.sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("features.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped features SQL"));
            }
        }
        self.forward.validate().map_err(|p| invalid(p.key, p.problem, p.fix))?;
        self.cost.validate().map_err(|(key, problem, fix)| invalid(key, problem, fix))?;
        let mut names = std::collections::HashSet::new();
        for slo in &self.slo {
            slo.validate().map_err(|(problem, fix)| invalid("slo", problem, fix))?;
            if !names.insert(slo.name.as_str()) {
                return Err(invalid("slo", format!("two SLOs are named `{}`", slo.name), "give each [[slo]] its own name"));
            }
        }
        if self.health.every < self.window.size {
            return Err(invalid("health.every", format!("{} is shorter than a window ({})", humantime::format_duration(self.health.every), humantime::format_duration(self.window.size)), "use a multiple of window.size, e.g. \"1m\""));
        }
        if let Some(p) = &self.health.sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("health.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped sql/health.sql"));
            }
        }
        self.history.validate(&crate::engine::TABLES)?;
        Ok(())
    }
}
