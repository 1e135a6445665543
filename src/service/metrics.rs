//! What a running receiver (and a relay's downstream sessions) tell a monitoring system:
//! Prometheus metrics and a health state, read by the HTTP endpoint in
//! [`super::http`].
//!
//! The receive loop updates [`ReceiverMetrics`] per message or batch, never per byte, and
//! only with relaxed atomic stores and adds: no lock and no allocation on the hot path.
//! Locks are taken where things are rare: the health state changes on connect and
//! disconnect, a labelled series is created on an error or a new downstream, and a scrape
//! reads everything.
//!
//! LSNs are exported as byte positions (`walferry_flushed_lsn_bytes`), so that lag in
//! bytes is a subtraction in PromQL, as `pg_wal_lsn_diff` is in SQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::lag::{LagTracker, Stage};
use crate::wal::{Lsn, TimeLineId};

type LsnGauge = Gauge<u64, AtomicU64>;
type SecondsGauge = Gauge<f64, AtomicU64>;
type DownstreamLabels = [(&'static str, String); 2];

/// The registry, the receiver's metrics, the downstream families and the health state.
/// Shared as `Arc<Metrics>` between the receiver, the relay's sessions and the endpoint.
pub struct Metrics {
    registry: Registry,
    receiver: ReceiverMetrics,
    downstream: DownstreamFamilies,
    upload: UploadGauges,
    health: Mutex<Health>,
}

/// The uploader of an `s3://` archive, read from its counters at each scrape.
#[derive(Default)]
struct UploadGauges {
    stats: Mutex<Option<Arc<crate::objstore::upload::UploadStats>>>,
    pending_bytes: Gauge,
    pending_files: Gauge,
    lag: SecondsGauge,
    uploaded_bytes: Gauge,
    failures: Gauge,
}

impl UploadGauges {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "upload_pending",
            "Complete WAL files in the spool not yet confirmed by the object store",
            Unit::Bytes,
            self.pending_bytes.clone(),
        );
        r.register(
            "upload_pending_files",
            "Complete WAL files in the spool not yet confirmed by the object store",
            self.pending_files.clone(),
        );
        r.register_with_unit(
            "upload_lag",
            "Age of the oldest complete WAL file not yet in the object store",
            Unit::Seconds,
            self.lag.clone(),
        );
        r.register_with_unit(
            "uploaded",
            "WAL uploaded to the object store since start (as stored)",
            Unit::Bytes,
            self.uploaded_bytes.clone(),
        );
        r.register(
            "upload_failures",
            "Failed upload attempts since start (each is retried)",
            self.failures.clone(),
        );
    }

    fn refresh(&self) {
        let Some(s) = self.stats.lock().ok().and_then(|g| g.clone()) else {
            return;
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        self.pending_bytes.set(get(&s.pending_bytes));
        self.pending_files.set(get(&s.pending_files));
        self.lag
            .set(s.oldest_pending_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        self.uploaded_bytes.set(get(&s.uploaded_bytes));
        self.failures.set(get(&s.failures));
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The receiver's side: where the stream is, what reached the archive, how it fares.
/// Invariant of what it is fed: `flushed <= validated <= received` within a stream.
#[derive(Default)]
pub struct ReceiverMetrics {
    received_lsn: LsnGauge,
    validated_lsn: LsnGauge,
    flushed_lsn: LsnGauge,
    timeline: Gauge<u64, AtomicU64>,
    archived_bytes: Counter,
    archived_segments: Counter,
    reconnects: Counter,
    errors: Family<[(&'static str, &'static str); 1], Counter>,
    upstream_connected: Gauge,
    last_message: SecondsGauge,
    /// The stream's segment size, to count the segment ends `flushed` passes.
    seg_size: AtomicU64,
}

#[derive(Default)]
struct DownstreamFamilies {
    sent_lsn: Family<DownstreamLabels, LsnGauge>,
    write_lsn: Family<DownstreamLabels, LsnGauge>,
    flush_lsn: Family<DownstreamLabels, LsnGauge>,
    replay_lsn: Family<DownstreamLabels, LsnGauge>,
    write_lag_bytes: Family<DownstreamLabels, LsnGauge>,
    flush_lag_bytes: Family<DownstreamLabels, LsnGauge>,
    replay_lag_bytes: Family<DownstreamLabels, LsnGauge>,
    write_lag: Family<DownstreamLabels, SecondsGauge>,
    flush_lag: Family<DownstreamLabels, SecondsGauge>,
    replay_lag: Family<DownstreamLabels, SecondsGauge>,
}

/// Whether the receiver is doing its job, for `/healthz`.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Before the first connection.
    Starting { since: SystemTime },
    /// WAL is streaming from the upstream server.
    Streaming { since: SystemTime },
    /// The stream was lost and the receiver is reconnecting; `since` is when it was lost
    /// (kept across failed attempts), `last_error` what the last attempt ran into.
    Connecting {
        since: SystemTime,
        last_error: String,
    },
    /// The receiver ended (end position reached, stop requested, or a final error).
    Stopped { since: SystemTime, reason: String },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Streaming { .. })
    }

    fn status(&self) -> &'static str {
        match self {
            Health::Starting { .. } => "starting",
            Health::Streaming { .. } => "streaming",
            Health::Connecting { .. } => "connecting",
            Health::Stopped { .. } => "stopped",
        }
    }

    fn since(&self) -> SystemTime {
        match self {
            Health::Starting { since }
            | Health::Streaming { since }
            | Health::Connecting { since, .. }
            | Health::Stopped { since, .. } => *since,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let receiver = ReceiverMetrics::default();
        let downstream = DownstreamFamilies::default();
        let mut registry = Registry::with_prefix("walferry");
        receiver.register(&mut registry);
        downstream.register(&mut registry);
        let upload = UploadGauges::default();
        upload.register(&mut registry);
        Arc::new(Metrics {
            registry,
            receiver,
            downstream,
            upload,
            health: Mutex::new(Health::Starting {
                since: SystemTime::now(),
            }),
        })
    }

    pub fn receiver(&self) -> &ReceiverMetrics {
        &self.receiver
    }

    /// Series for one downstream standby, labelled `application_name` and `client_addr`
    /// (give the address with its port, so that two connections of one standby never
    /// share series); dropping the handle removes them.
    pub fn downstream(
        self: &Arc<Self>,
        application_name: &str,
        client_addr: &str,
    ) -> DownstreamMetrics {
        let labels = [
            ("application_name", application_name.to_string()),
            ("client_addr", client_addr.to_string()),
        ];
        let f = &self.downstream;
        let get =
            |family: &Family<DownstreamLabels, LsnGauge>| family.get_or_create(&labels).clone();
        let get_secs =
            |family: &Family<DownstreamLabels, SecondsGauge>| family.get_or_create(&labels).clone();
        DownstreamMetrics {
            sent_lsn: get(&f.sent_lsn),
            lsn: [get(&f.write_lsn), get(&f.flush_lsn), get(&f.replay_lsn)],
            lag_bytes: [
                get(&f.write_lag_bytes),
                get(&f.flush_lag_bytes),
                get(&f.replay_lag_bytes),
            ],
            lag_seconds: [
                get_secs(&f.write_lag),
                get_secs(&f.flush_lag),
                get_secs(&f.replay_lag),
            ],
            tracker: LagTracker::default(),
            epoch: Instant::now(),
            labels,
            metrics: Arc::clone(self),
        }
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
    }

    /// The stream is up (again); a timeline switch keeps the first `since`.
    pub fn set_streaming(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if !health.is_healthy() {
            *health = Health::Streaming {
                since: SystemTime::now(),
            };
        }
    }

    /// The stream was lost (or an attempt to restore it failed) with `error`.
    pub fn set_connecting(&self, error: &str) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let since = match &*health {
            Health::Connecting { since, .. } | Health::Starting { since } => *since,
            _ => SystemTime::now(),
        };
        *health = Health::Connecting {
            since,
            last_error: error.to_string(),
        };
    }

    /// The receiver ended, for `reason`.
    pub fn set_stopped(&self, reason: String) {
        self.set_health(Health::Stopped {
            since: SystemTime::now(),
            reason,
        });
    }

    /// Expose an `s3://` archive's uploader in the metrics.
    pub fn set_upload_stats(&self, stats: Arc<crate::objstore::upload::UploadStats>) {
        if let Ok(mut g) = self.upload.stats.lock() {
            *g = Some(stats);
        }
    }

    /// The Prometheus text exposition (OpenMetrics 1.0) of every series.
    pub fn encode(&self) -> String {
        self.upload.refresh();
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// The `/healthz` body: the state, since when, and where the archive stands.
    pub fn health_json(&self) -> (bool, String) {
        let health = self.health();
        let since = health.since();
        let mut body = serde_json::json!({
            "status": health.status(),
            "since": iso8601(since),
            "seconds": SystemTime::now()
                .duration_since(since)
                .unwrap_or_default()
                .as_secs_f64(),
            "timeline": self.receiver.timeline.get(),
            "received_lsn": Lsn(self.receiver.received_lsn.get()).to_string(),
            "flushed_lsn": Lsn(self.receiver.flushed_lsn.get()).to_string(),
        });
        match &health {
            Health::Connecting { last_error, .. } => {
                body["last_error"] = last_error.as_str().into()
            }
            Health::Stopped { reason, .. } => body["reason"] = reason.as_str().into(),
            _ => {}
        }
        (health.is_healthy(), body.to_string())
    }
}

impl ReceiverMetrics {
    fn register(&self, r: &mut Registry) {
        let lsn = "End of the WAL received from the upstream server (LSN as a byte position)";
        r.register_with_unit("received_lsn", lsn, Unit::Bytes, self.received_lsn.clone());
        r.register_with_unit(
            "validated_lsn",
            "End of the received WAL checked valid (page headers, records, CRC-32C)",
            Unit::Bytes,
            self.validated_lsn.clone(),
        );
        r.register_with_unit(
            "flushed_lsn",
            "End of the WAL durable in the archive and validated: what is acknowledged as flushed",
            Unit::Bytes,
            self.flushed_lsn.clone(),
        );
        r.register("timeline", "Timeline being received", self.timeline.clone());
        r.register_with_unit(
            "archived",
            "WAL made durable in the archive (uncompressed bytes; a resumed .partial segment counts again)",
            Unit::Bytes,
            self.archived_bytes.clone(),
        );
        r.register(
            "archived_segments",
            "Segments completed in the archive (given their final name)",
            self.archived_segments.clone(),
        );
        r.register(
            "reconnects",
            "Times the receiver reconnected after losing the upstream server",
            self.reconnects.clone(),
        );
        r.register(
            "errors",
            "Receive errors by kind (connection, auth, tls, server, protocol, disk_full, invalid_wal, archive, slot, internal)",
            self.errors.clone(),
        );
        r.register(
            "upstream_connected",
            "1 while connected to the upstream server, else 0",
            self.upstream_connected.clone(),
        );
        r.register_with_unit(
            "last_message_receipt_timestamp",
            "When the last message (WAL or keepalive) arrived from the upstream server (Unix time)",
            Unit::Seconds,
            self.last_message.clone(),
        );
    }

    /// A stream (START_REPLICATION) begins at `start` on `tli`; positions restart there
    /// and nothing is counted as archived for it.
    pub fn stream_started(&self, tli: TimeLineId, start: Lsn, seg_size: u64) {
        self.timeline.set(u64::from(tli.0));
        self.seg_size.store(seg_size, Ordering::Relaxed);
        for g in [&self.received_lsn, &self.validated_lsn, &self.flushed_lsn] {
            g.set(start.0);
        }
    }

    /// WAL received up to `received`, checked up to `validated` (per message).
    pub fn received(&self, received: Lsn, validated: Lsn) {
        self.received_lsn.set(received.0);
        self.validated_lsn.set(validated.0);
        self.message();
    }

    /// Any message from the server (keepalives too): it is alive.
    pub fn message(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_message.set(now.as_secs_f64());
    }

    /// WAL up to `flushed` is durable and validated; counts what the advance archived.
    /// Called from one task (the receive loop), so its read-then-set does not race.
    pub fn flushed(&self, flushed: Lsn) {
        let before = self.flushed_lsn.get();
        if flushed.0 <= before {
            return;
        }
        self.flushed_lsn.set(flushed.0);
        self.archived_bytes.inc_by(flushed.0 - before);
        // A segment gets its final name when the flushed end passes its end (the writer
        // renames before it publishes).
        let seg_size = self.seg_size.load(Ordering::Relaxed);
        if let (Some(now), Some(then)) = (
            flushed.0.checked_div(seg_size),
            before.checked_div(seg_size),
        ) {
            self.archived_segments.inc_by(now - then);
        }
    }

    pub fn connected(&self, up: bool) {
        self.upstream_connected.set(i64::from(up));
    }

    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// An error of `kind` (a fixed, short name: a label value).
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn flushed_lsn(&self) -> Lsn {
        Lsn(self.flushed_lsn.get())
    }
}

impl DownstreamFamilies {
    fn register(&self, r: &mut Registry) {
        let lsns = [
            ("sent", "End of the WAL sent to the standby", &self.sent_lsn),
            (
                "write",
                "WAL position the standby reports written",
                &self.write_lsn,
            ),
            (
                "flush",
                "WAL position the standby reports flushed",
                &self.flush_lsn,
            ),
            (
                "replay",
                "WAL position the standby reports replayed",
                &self.replay_lsn,
            ),
        ];
        for (stage, help, family) in lsns {
            r.register_with_unit(
                format!("downstream_{stage}_lsn"),
                help,
                Unit::Bytes,
                family.clone(),
            );
        }
        let stages = [
            ("write", &self.write_lag_bytes, &self.write_lag),
            ("flush", &self.flush_lag_bytes, &self.flush_lag),
            ("replay", &self.replay_lag_bytes, &self.replay_lag),
        ];
        for (stage, bytes, seconds) in stages {
            r.register_with_unit(
                format!("downstream_{stage}_lag"),
                format!("How far the standby's {stage} position is behind the archive's flushed end, at its last report"),
                Unit::Bytes,
                bytes.clone(),
            );
            r.register_with_unit(
                format!("downstream_{stage}_lag"),
                format!("Time between WAL being sent and the standby reporting it {stage} (as pg_stat_replication.{stage}_lag; 0 when caught up)"),
                Unit::Seconds,
                seconds.clone(),
            );
        }
    }
}

/// One downstream standby's series (see [`Metrics::downstream`]). Owned by its session:
/// the lag tracker in it is plain data, not shared.
pub struct DownstreamMetrics {
    sent_lsn: LsnGauge,
    lsn: [LsnGauge; 3],
    lag_bytes: [LsnGauge; 3],
    lag_seconds: [SecondsGauge; 3],
    tracker: LagTracker,
    epoch: Instant,
    labels: DownstreamLabels,
    metrics: Arc<Metrics>,
}

impl DownstreamMetrics {
    /// WAL up to `end` was sent to the standby (per message).
    pub fn sent(&mut self, end: Lsn) {
        self.sent_lsn.set(end.0);
        let now = self.now();
        self.tracker.sent(end, now);
    }

    /// The standby's status update ('r'): positions written, flushed and replayed.
    pub fn reply(&mut self, write: Lsn, flush: Lsn, replay: Lsn) {
        let now = self.now();
        let sent = Lsn(self.sent_lsn.get());
        let lags = self.tracker.reply(write, flush, replay, sent, now);
        let head = self.metrics.receiver.flushed_lsn.get();
        for (stage, lsn) in [
            (Stage::Write, write),
            (Stage::Flush, flush),
            (Stage::Replay, replay),
        ] {
            let i = stage as usize;
            self.lsn[i].set(lsn.0);
            self.lag_bytes[i].set(head.saturating_sub(lsn.0));
            let micros = lags[i].unwrap_or(0);
            self.lag_seconds[i].set(micros as f64 / 1e6);
        }
    }

    fn now(&self) -> i64 {
        // Starts at 1: 0 means "no sample" to the tracker.
        self.epoch.elapsed().as_micros() as i64 + 1
    }
}

impl Drop for DownstreamMetrics {
    fn drop(&mut self) {
        let f = &self.metrics.downstream;
        for family in [&f.sent_lsn, &f.write_lsn, &f.flush_lsn, &f.replay_lsn] {
            family.remove(&self.labels);
        }
        for family in [&f.write_lag_bytes, &f.flush_lag_bytes, &f.replay_lag_bytes] {
            family.remove(&self.labels);
        }
        for family in [&f.write_lag, &f.flush_lag, &f.replay_lag] {
            family.remove(&self.labels);
        }
    }
}

fn iso8601(t: SystemTime) -> String {
    let micros = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    crate::inspect::time::iso8601(crate::wal::TimestampTz::from_unix_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn receiver_series_have_their_names_types_and_values() {
        let m = Metrics::new();
        let r = m.receiver();
        r.stream_started(TimeLineId(2), Lsn(0x300_0000), 16 << 20);
        r.received(Lsn(0x420_0000), Lsn(0x410_0000));
        r.flushed(Lsn(0x400_0000));
        r.flushed(Lsn(0x410_0000));
        r.flushed(Lsn(0x408_0000)); // never backwards
        r.connected(true);
        r.reconnect();
        r.error("disk_full");
        r.error("disk_full");
        r.error("connection");
        let text = m.encode();
        let expect = [
            ("walferry_received_lsn_bytes", "69206016"),
            ("walferry_validated_lsn_bytes", "68157440"),
            ("walferry_flushed_lsn_bytes", "68157440"),
            ("walferry_timeline", "2"),
            ("walferry_archived_bytes_total", &(0x110_0000).to_string()),
            ("walferry_archived_segments_total", "1"),
            ("walferry_reconnects_total", "1"),
            ("walferry_errors_total{kind=\"disk_full\"}", "2"),
            ("walferry_errors_total{kind=\"connection\"}", "1"),
            ("walferry_upstream_connected", "1"),
        ];
        for (series, value) in expect {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        for typed in [
            "# TYPE walferry_flushed_lsn_bytes gauge",
            "# UNIT walferry_flushed_lsn_bytes bytes",
            "# TYPE walferry_archived_bytes counter",
            "# TYPE walferry_errors counter",
            "# TYPE walferry_last_message_receipt_timestamp_seconds gauge",
        ] {
            assert!(text.lines().any(|l| l == typed), "{typed} in\n{text}");
        }
        let stamp: f64 = sample(&text, "walferry_last_message_receipt_timestamp_seconds")
            .unwrap()
            .parse()
            .unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - stamp).abs() < 60.0, "{stamp} vs {now}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn downstream_series_are_labelled_and_removed_on_drop() {
        let m = Metrics::new();
        m.receiver().stream_started(TimeLineId(1), Lsn(0), 16 << 20);
        m.receiver().flushed(Lsn(5000));
        let mut d = m.downstream("standby1", "10.0.0.5:51234");
        d.sent(Lsn(4000));
        d.reply(Lsn(4000), Lsn(3000), Lsn(1000));
        let text = m.encode();
        let labels = "{application_name=\"standby1\",client_addr=\"10.0.0.5:51234\"}";
        for (name, value) in [
            ("walferry_downstream_sent_lsn_bytes", "4000"),
            ("walferry_downstream_write_lsn_bytes", "4000"),
            ("walferry_downstream_flush_lsn_bytes", "3000"),
            ("walferry_downstream_replay_lsn_bytes", "1000"),
            ("walferry_downstream_write_lag_bytes", "1000"),
            ("walferry_downstream_flush_lag_bytes", "2000"),
            ("walferry_downstream_replay_lag_bytes", "4000"),
        ] {
            let series = format!("{name}{labels}");
            assert_eq!(
                sample(&text, &series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        // Written at once: a lag of (almost) nothing, in seconds.
        let lag: f64 = sample(
            &text,
            &format!("walferry_downstream_write_lag_seconds{labels}"),
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((0.0..1.0).contains(&lag), "{lag}");
        drop(d);
        let text = m.encode();
        assert!(!text.contains("standby1"), "{text}");
        assert!(text.contains("# TYPE walferry_downstream_replay_lag_seconds gauge"));
    }

    #[test]
    fn healthz_says_why_it_is_unhealthy() {
        let m = Metrics::new();
        let (ok, body) = m.health_json();
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "starting");
        m.set_connecting("could not connect to server: Connection refused");
        let first = m.health();
        m.set_connecting("again");
        let Health::Connecting { since, last_error } = m.health() else {
            panic!("{:?}", m.health())
        };
        // `since` is when the trouble began, not the last attempt.
        assert_eq!(
            Some(since),
            match first {
                Health::Starting { since } | Health::Connecting { since, .. } => Some(since),
                _ => None,
            }
        );
        assert_eq!(last_error, "again");
        let (ok, body) = m.health_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(!ok);
        assert_eq!(v["status"], "connecting");
        assert_eq!(v["last_error"], "again");
        assert!(v["since"].as_str().unwrap().ends_with('Z'));
        m.receiver()
            .stream_started(TimeLineId(1), Lsn(0x100_0000), 16 << 20);
        m.set_streaming();
        let (ok, body) = m.health_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(ok);
        assert_eq!(v["status"], "streaming");
        assert_eq!(v["flushed_lsn"], "0/1000000");
        assert!(v.get("last_error").is_none());
    }
}
