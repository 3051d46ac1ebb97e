//! What the generator measures and reports: latency histograms (µs, HDR-style, 3 significant digits), the shared
//! monotonic clock that publish timestamps are taken from, and the generator's own CPU time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms resolve (µs): one minute, far beyond any run's duration plus drain.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on every Linux architecture we run on).
const USER_HZ: f64 = 100.0;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide epoch (the first call). Publishers stamp payloads with it and subscribers in
/// the same process subtract it, so no clock synchronisation is involved.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant [`now_ns`] counts from.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// A latency histogram in microseconds.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram (1 µs .. 60 s, 3 significant digits).
    pub fn new() -> Self {
        // The bounds are constants that `new_with_bounds` accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
        match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
            Ok(h) => Self(h),
            Err(e) => unreachable!("constant histogram bounds rejected: {e}"),
        }
    }

    /// Records one latency, clamped into the histogram's range.
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record((ns / 1_000).max(1));
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1) in µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// Largest recorded value in µs.
    pub fn max_us(&self) -> u64 {
        self.0.max()
    }

    /// p50/p99/p99.9/max as JSON fields.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.max_us(),
        })
    }
}

/// Adds `generator_cpu_s`, the CPU seconds used since `before` (an [`own_cpu_seconds`] reading), when both readings
/// exist.
pub fn extend_generator_cpu(out: &mut serde_json::Value, before: Option<f64>) {
    if let (Some(before), Some(after)) = (before, own_cpu_seconds()) {
        extend(
            out,
            serde_json::json!({ "generator_cpu_s": after - before }),
        );
    }
}

/// CPU seconds (user + system) this process has used so far; `None` if /proc is unreadable.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds (user + system) the calling thread has used so far; `None` if /proc is unreadable.
pub fn thread_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/thread-self/stat")
}

/// Resident and peak resident memory of this process in bytes (`VmRSS`, `VmHWM`); `None` if unreadable.
pub fn own_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, i.e. 12 and 13 after ") state".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Merges a JSON object's fields into another.
pub fn extend(target: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(t), serde_json::Value::Object(m)) = (target.as_object_mut(), more) {
        t.extend(m);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = Latency::new();
        for us in 1..=1000u64 {
            h.record_ns(us * 1000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.quantile_us(0.5), 500);
        assert_eq!(h.quantile_us(0.99), 990);
        let mut other = Latency::new();
        other.record(Duration::from_secs(2));
        h.merge(&other);
        assert!(h.max_us() >= 1_999_000);
    }

    #[test]
    fn empty_histogram_reports_zero_and_cpu_is_readable() {
        assert_eq!(Latency::new().quantile_us(0.99), 0);
        assert!(own_cpu_seconds().is_some());
        assert!(thread_cpu_seconds().is_some());
        let (rss, peak) = own_memory().unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
