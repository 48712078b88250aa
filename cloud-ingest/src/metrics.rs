//! Prometheus metrics: a tiny registry of counters and gauges (optionally
//! with one label, e.g. `partition`), histograms with fixed buckets, and a
//! `/metrics` HTTP endpoint in the text exposition format 0.0.4. Both
//! `bridge` and `registry` serve one.
//!
//! Invariants: updating a metric never blocks on I/O and never allocates
//! for unlabelled metrics; the endpoint answers every GET with the current
//! values and anything else with 404.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// A counter or gauge value.
#[derive(Debug, Clone, Default)]
pub struct Value(Arc<AtomicI64>);

impl Value {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds (upper bounds, ascending).
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    help: &'static str,
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last one counts those
    /// above every bound.
    buckets: Box<[AtomicU64]>,
    /// The sum of all observations (`f64` bits).
    sum: AtomicU64,
}

impl Histogram {
    /// Counts `v` in the first bucket whose bound is at least `v`.
    pub fn observe(&self, v: f64) {
        let h = &self.0;
        let i = h
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(h.bounds.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = h
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    fn render(&self, name: &str, out: &mut String) {
        let h = &self.0;
        let _ = writeln!(out, "# HELP {name} {}", h.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        // Cumulative, and `_count` is the `+Inf` bucket: consistent even
        // while observations land during the render.
        let mut seen = 0u64;
        for (bound, bucket) in h.bounds.iter().zip(h.buckets.iter()) {
            seen += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {seen}");
        }
        if let Some(above) = h.buckets.last() {
            seen += above.load(Ordering::Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {seen}");
        let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {seen}");
    }
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: &'static str,
    label: Option<&'static str>,
    values: BTreeMap<String, Value>,
}

/// All metrics of one process; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
    histograms: Arc<Mutex<BTreeMap<&'static str, Histogram>>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A monotonically increasing counter (name should end in `_total`).
    pub fn counter(&self, name: &'static str, help: &'static str) -> Value {
        self.register(name, help, "counter", None, String::new())
    }

    /// A value that goes up and down.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Value {
        self.register(name, help, "gauge", None, String::new())
    }

    /// A histogram with the upper bounds `bounds` (ascending; `+Inf` is
    /// added). Registering a name again returns the first histogram.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
    ) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        histograms
            .entry(name)
            .or_insert_with(|| {
                Histogram(Arc::new(HistogramInner {
                    help,
                    bounds,
                    buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum: AtomicU64::new(0f64.to_bits()),
                }))
            })
            .clone()
    }

    /// One gauge per label value, e.g. `consumer_lag{partition="3"}`.
    pub fn labelled_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        value: &str,
    ) -> Value {
        self.register(name, help, "gauge", Some(label), value.to_string())
    }

    /// Removes the series of `name` with label value `value` (a gauge of
    /// something this process no longer owns); it reappears when
    /// registered again.
    pub fn remove_labelled(&self, name: &'static str, value: &str) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(family) = families.get_mut(name) {
            family.values.remove(value);
        }
    }

    /// One counter per label value.
    pub fn labelled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        value: &str,
    ) -> Value {
        self.register(name, help, "counter", Some(label), value.to_string())
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        label: Option<&'static str>,
        label_value: String,
    ) -> Value {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            label,
            values: BTreeMap::new(),
        });
        family.values.entry(label_value).or_default().clone()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, f) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (lv, v) in &f.values {
                match f.label {
                    Some(l) => {
                        let lv = lv.replace('\\', "\\\\").replace('"', "\\\"");
                        let _ = writeln!(out, "{name}{{{l}=\"{lv}\"}} {}", v.get());
                    }
                    None => {
                        let _ = writeln!(out, "{name} {}", v.get());
                    }
                }
            }
        }
        drop(families);
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        for (name, h) in histograms.iter() {
            h.render(name, &mut out);
        }
        out
    }
}

/// How long one `/metrics` exchange may take (read the request, write the
/// answer): a client that connects and sends nothing is dropped after it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: watch::Receiver<bool>) {
    serve_with(listener, metrics, shutdown, EXCHANGE_TIMEOUT).await;
}

async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    exchange_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        // Finished exchanges are reaped; at most MAX_CONNECTIONS run.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = shutdown.changed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: retrying at once would spin.
                log::warn!("/metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _slot = slot;
            let exchange = async {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /metrics") {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            };
            let _ = tokio::time::timeout(exchange_timeout, exchange).await;
        });
    }
}

/// Binds `addr`; the error names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for /metrics on {addr}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_counters_and_labelled_gauges() {
        let m = Metrics::new();
        m.counter("rae_messages_in_total", "Messages in.").add(3);
        m.labelled_gauge("rae_consumer_lag", "Lag.", "partition", "0")
            .set(7);
        let text = m.render();
        assert!(
            text.contains("# TYPE rae_messages_in_total counter"),
            "{text}"
        );
        assert!(text.contains("rae_messages_in_total 3"), "{text}");
        assert!(
            text.contains("rae_consumer_lag{partition=\"0\"} 7"),
            "{text}"
        );
    }

    #[test]
    fn a_removed_series_is_no_longer_rendered_and_comes_back_when_registered() {
        let m = Metrics::new();
        m.labelled_gauge("rae_consumer_lag", "Lag.", "partition", "t/0")
            .set(7);
        m.labelled_gauge("rae_consumer_lag", "Lag.", "partition", "t/1")
            .set(3);
        m.remove_labelled("rae_consumer_lag", "t/0");
        let text = m.render();
        assert!(!text.contains("partition=\"t/0\""), "{text}");
        assert!(
            text.contains("rae_consumer_lag{partition=\"t/1\"} 3"),
            "{text}"
        );
        m.labelled_gauge("rae_consumer_lag", "Lag.", "partition", "t/0")
            .set(1);
        assert!(m.render().contains("rae_consumer_lag{partition=\"t/0\"} 1"));
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        let h = m.histogram("rae_batch_seconds", "Batch time.", &[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        m.histogram("rae_batch_seconds", "Batch time.", &[0.1, 1.0])
            .observe(0.2);
        let text = m.render();
        let expected = "# HELP rae_batch_seconds Batch time.\n\
             # TYPE rae_batch_seconds histogram\n\
             rae_batch_seconds_bucket{le=\"0.1\"} 2\n\
             rae_batch_seconds_bucket{le=\"1\"} 4\n\
             rae_batch_seconds_bucket{le=\"+Inf\"} 5\n\
             rae_batch_seconds_sum 3.85\n\
             rae_batch_seconds_count 5\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn registering_twice_returns_the_same_value() {
        let m = Metrics::new();
        m.counter("c_total", "c").inc();
        m.counter("c_total", "c").inc();
        assert_eq!(m.counter("c_total", "c").get(), 2);
    }

    #[tokio::test]
    async fn endpoint_serves_the_current_values() {
        let m = Metrics::new();
        m.gauge("g", "a gauge").set(42);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, m, rx));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("g 42"), "{body}");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_does_not_block_scrapes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        m.counter("rae_up_total", "Up.").inc();
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_with(listener, m, stop_rx, Duration::from_millis(300)));
        // More silent clients than the server serves at once.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Their exchanges time out, which frees the slots for a scrape.
        let mut scrape = tokio::net::TcpStream::connect(addr).await.unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(10), scrape.read_to_string(&mut body))
            .await
            .expect("the scrape is answered once the silent clients are dropped")
            .unwrap();
        assert!(body.contains("rae_up_total 1"), "{body}");
        // A silent client's connection was closed by the server.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), silent[0].read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
