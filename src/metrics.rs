//! Prometheus metrics (docs/DESIGN.md: names start `keyward_`, counters end `_total`, durations are
//! `_seconds` histograms; labels come from closed sets only — resource names from the config,
//! sides, reasons, results — never addresses, users or secrets).

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric keyward exports.
pub struct Metrics {
    registry: Registry,
    /// Connections accepted.
    pub connections: IntCounterVec,
    /// Connections open now.
    pub open: IntGaugeVec,
    /// Failures, by side and reason.
    pub errors: IntCounterVec,
    /// Bytes relayed, by direction (`client_to_upstream`, `upstream_to_client`).
    pub bytes: IntCounterVec,
    /// TCP connect time to the upstream.
    pub connect_seconds: HistogramVec,
    /// TLS handshake time with the upstream.
    pub handshake_seconds: HistogramVec,
    /// Upstream authentication time (database logins).
    pub auth_seconds: HistogramVec,
    /// HTTP responses sent to apps, by status code.
    pub http_requests: IntCounterVec,
    /// HTTP request duration (request received → response headers), by status class.
    pub http_duration: HistogramVec,
    /// Reload attempts, by result (`success`, `error`).
    pub reloads: IntCounterVec,
    /// Unix time of the last successful (re)load.
    pub last_reload_success: Gauge,
    /// Whether the last (re)load succeeded (1) or failed and the old config runs on (0).
    pub last_reload_ok: IntGauge,
    /// Expiry (Unix time) of the OAuth2 access token in use, per resource.
    pub oauth2_token_expiration: GaugeVec,
    /// Expiry of certificates in use, by role (`client_cert`, `ca`, `upstream_leaf`).
    pub cert_expiration: GaugeVec,
    /// OAuth2 token fetches, by result.
    pub oauth2_refreshes: IntCounterVec,
    /// Secret and credential reads, by result.
    pub credential_reads: IntCounterVec,
    /// Temporary AWS credential fetches, by source and result.
    pub credential_refreshes: IntCounterVec,
    /// Expiry (Unix time) of the temporary AWS credentials in use.
    pub credential_expiration: GaugeVec,
    /// Audit events dropped because the sink fell behind (its queue was full).
    pub audit_dropped: IntCounterVec,
    /// Application connections open now, per worker thread.
    pub worker_connections: IntGaugeVec,
    /// The last upstream leaf seen per resource, so it is parsed only when it changes.
    leaves: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails for duplicate or malformed names, which are constants here:
        // a failure is a programming error caught by every test run.
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registration");
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["resource"],
            )
        };
        let metrics = Self {
            connections: reg!(counter("keyward_connections_total", "Connections accepted from applications.", &["resource", "protocol"])),
            open: reg!(IntGaugeVec::new(Opts::new("keyward_connections_open", "Application connections open now."), &["resource"])),
            errors: reg!(counter("keyward_connection_errors_total", "Failed connections and requests, by the side at fault and a reason from a closed list.", &["resource", "side", "reason"])),
            bytes: reg!(counter("keyward_bytes_total", "Bytes relayed, by direction.", &["resource", "direction"])),
            connect_seconds: reg!(histogram("keyward_upstream_connect_seconds", "Time to open a TCP connection to the upstream.")),
            handshake_seconds: reg!(histogram("keyward_tls_handshake_seconds", "Time of the TLS handshake with the upstream.")),
            auth_seconds: reg!(histogram("keyward_upstream_auth_seconds", "Time to authenticate to the upstream.")),
            http_requests: reg!(counter("keyward_http_requests_total", "HTTP responses sent to applications, by status code.", &["resource", "code"])),
            http_duration: reg!(HistogramVec::new(
                HistogramOpts::new("keyward_http_request_duration_seconds", "Time from an application's HTTP request to keyward's response headers, by status class (2xx..5xx).").buckets(LATENCY_BUCKETS.to_vec()),
                &["resource", "class"]
            )),
            reloads: reg!(counter("keyward_config_reloads_total", "Configuration loads and reloads, by result.", &["result"])),
            last_reload_success: reg!(Gauge::new("keyward_config_last_reload_success_timestamp_seconds", "Unix time of the last successful configuration (re)load.")),
            last_reload_ok: reg!(IntGauge::new("keyward_config_last_reload_success", "Whether the last configuration (re)load succeeded (1) or failed, the running configuration kept (0).")),
            oauth2_token_expiration: reg!(GaugeVec::new(Opts::new("keyward_oauth2_token_expiration_timestamp_seconds", "Expiry (Unix time) of the OAuth2 access token in use."), &["resource"])),
            cert_expiration: reg!(GaugeVec::new(Opts::new("keyward_cert_expiration_timestamp_seconds", "Expiry (Unix time) of certificates in use: client_cert, ca, upstream_leaf (the last one the upstream presented)."), &["resource", "role"])),
            oauth2_refreshes: reg!(counter("keyward_oauth2_token_refreshes_total", "OAuth2 token fetches, by result.", &["resource", "result"])),
            credential_reads: reg!(counter("keyward_credential_reads_total", "Secret and credential reads, by result.", &["resource", "result"])),
            credential_refreshes: reg!(counter("keyward_credential_refreshes_total", "Temporary AWS credential fetches (default chain, assume_role), by source and result.", &["resource", "source", "result"])),
            credential_expiration: reg!(GaugeVec::new(Opts::new("keyward_credential_expiration_timestamp_seconds", "Expiry (Unix time) of the temporary AWS credentials in use."), &["resource"])),
            audit_dropped: reg!(counter("keyward_audit_dropped_total", "Audit events dropped because the audit sink fell behind (its queue was full) or failed.", &["resource"])),
            worker_connections: reg!(IntGaugeVec::new(Opts::new("keyward_worker_connections", "Application connections open now, per worker thread (0 .. the worker count - 1): how evenly the workers share them."), &["worker"])),
            registry: registry.clone(),
            leaves: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        let build = reg!(IntGaugeVec::new(
            Opts::new("keyward_build_info", "keyward's version; always 1."),
            &["version"]
        ));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = registry.register(Box::new(process)) {
            tracing::warn!("process metrics unavailable: {e}");
        }
        metrics
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Records the expiry of the leaf certificate an upstream presented (parsed only when it
    /// differs from the last one seen for the resource).
    pub fn observe_leaf(&self, resource: &str, leaf: &rustls::pki_types::CertificateDer<'_>) {
        let Ok(mut seen) = self.leaves.lock() else {
            return;
        };
        if seen
            .get(resource)
            .is_some_and(|der| der.as_slice() == leaf.as_ref())
        {
            return;
        }
        if let Ok(info) = crate::tls::CertInfo::parse(leaf) {
            self.cert_expiration
                .with_label_values(&[resource, "upstream_leaf"])
                .set(info.not_after as f64);
        }
        seen.insert(resource.to_owned(), leaf.to_vec());
    }

    /// Creates a resource's series at zero, so they are exported before the first event — only
    /// those that can move for it: no TLS handshake histogram for `tls.mode: disable`, no
    /// authentication histogram where keyward does no timed credential work (tcp; http with
    /// static headers).
    pub fn declare(&self, name: &str, series: Declared) {
        self.open.with_label_values(&[name]);
        self.connect_seconds.with_label_values(&[name]);
        if series.tls {
            self.handshake_seconds.with_label_values(&[name]);
        }
        if series.auth {
            self.auth_seconds.with_label_values(&[name]);
        }
        if series.audit {
            self.audit_dropped.with_label_values(&[name]);
        }
        let uses_oauth2 = series.oauth2;
        if uses_oauth2 {
            for result in ["success", "error"] {
                self.oauth2_refreshes.with_label_values(&[name, result]);
            }
        }
    }

    /// Drops the gauges of a removed resource (counters keep their totals).
    pub fn forget(&self, resource: &str) {
        let _ = self.open.remove_label_values(&[resource]);
        let _ = self
            .oauth2_token_expiration
            .remove_label_values(&[resource]);
        let _ = self.credential_expiration.remove_label_values(&[resource]);
        for role in ["client_cert", "ca", "upstream_leaf"] {
            let _ = self.cert_expiration.remove_label_values(&[resource, role]);
        }
    }
}

/// Which of a resource's series [`Metrics::declare`] creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared {
    /// It speaks TLS upstream.
    pub tls: bool,
    /// keyward times credential work for it (database logins, OAuth2, SigV4).
    pub auth: bool,
    /// It fetches OAuth2 tokens.
    pub oauth2: bool,
    /// It records audit events.
    pub audit: bool,
}

/// The status class label of a response: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_help_and_type() {
        let m = metrics();
        m.connections.with_label_values(&["t", "tcp"]).inc();
        m.errors
            .with_label_values(&["t", "upstream", "unknown_issuer"])
            .inc();
        m.connect_seconds.with_label_values(&["t"]).observe(0.01);
        let text = m.render();
        for name in [
            "keyward_connections_total",
            "keyward_build_info",
            "keyward_upstream_connect_seconds_bucket",
            "keyward_config_last_reload_success_timestamp_seconds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("# TYPE keyward_connections_total counter"));
        assert!(text.contains("le=\"+Inf\""));
    }
}
