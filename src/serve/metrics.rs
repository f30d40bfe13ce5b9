//! The one metrics registry type of every server (the controller's `run`, the webhook): a
//! prefix, registration, and the text exposition with Prometheus' spelling of infinities.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::{Metric, Registry, Unit};

/// A `result` label, the one most metrics of this project carry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Metrics under one name prefix, exposed as OpenMetrics text.
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl MetricsRegistry {
    pub fn new(prefix: &str) -> Self {
        MetricsRegistry {
            registry: Registry::with_prefix(prefix),
        }
    }

    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// Registers a metric in a base unit (OpenMetrics adds a `# UNIT` line; the name must end
    /// in the unit).
    pub fn register_with_unit(&mut self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.registry.register_with_unit(name, help, unit, metric);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        canonical_infinities(out)
    }
}

/// prometheus-client writes infinite values as `inf`, which Prometheus reads (Go's
/// `ParseFloat` and OpenMetrics accept any case), but `+Inf` is the spelling the Prometheus
/// text format documents and every consumer knows: sample values are rewritten to it.
fn canonical_infinities(text: String) -> String {
    if !text.contains(" inf\n") && !text.contains(" -inf\n") {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        match (line.strip_suffix(" inf"), line.strip_suffix(" -inf")) {
            _ if line.starts_with('#') => out.push_str(line),
            (Some(sample), _) => {
                out.push_str(sample);
                out.push_str(" +Inf");
            }
            (_, Some(sample)) => {
                out.push_str(sample);
                out.push_str(" -Inf");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sample_values_are_respelled() {
        let text = "# HELP x_seconds ends in inf\nx_seconds inf\ny -inf\nz{a=\"inf\"} 1\n# EOF\n";
        assert_eq!(
            canonical_infinities(text.into()),
            "# HELP x_seconds ends in inf\nx_seconds +Inf\ny -Inf\nz{a=\"inf\"} 1\n# EOF\n"
        );
    }
}
