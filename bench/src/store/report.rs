//! The `store` results as one-line progress notes and as the markdown tables of `docs/design/session-store.md`.

use serde_json::Value;

const MB: f64 = 1024.0 * 1024.0;

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn load(v: &Value) -> String {
    v.get("loadavg")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_f64)
        .map_or_else(String::new, |l| format!("{l:.1}"))
}

/// One steady result in a line.
pub fn steady_line(v: &Value) -> String {
    format!(
        "steady {} offered {}: {:.0} ops/s, batch mean {:.1}, op p50/p99/max {}/{}/{} ms, commit p99 {} ms, store CPU {:.2} s/1M ops",
        text(v, "store"),
        text(v, "offered_ops_per_s"),
        num(v, &["achieved_ops_per_s"]),
        num(v, &["batch", "mean"]),
        ms(num(v, &["op_latency", "p50_us"])),
        ms(num(v, &["op_latency", "p99_us"])),
        ms(num(v, &["op_latency", "max_us"])),
        ms(num(v, &["commit_time", "p99_us"])),
        num(v, &["cpu_s_per_1m_ops", "store"]),
    )
}

/// One fill result in a line.
pub fn fill_line(v: &Value) -> String {
    format!(
        "fill {}: {:.0} messages in {:.1} s, disk {:.0} MB",
        text(v, "store"),
        num(v, &["messages"]),
        num(v, &["secs"]),
        num(v, &["disk_after_fill", "allocated_bytes"]) / MB,
    )
}

/// One reopen result in a line.
pub fn scan_line(v: &Value) -> String {
    format!(
        "{} {}: open {:.2} s, open + rebuild {:.2} s, {:.0} messages, RSS {:.0} MB",
        text(v, "phase"),
        text(v, "store"),
        num(v, &["open_s"]),
        num(v, &["open_and_scan_s"]),
        num(v, &["messages"]),
        num(v, &["rss_after_scan_bytes"]) / MB,
    )
}

/// One torn-write loop in a line.
pub fn torn_line(v: &Value) -> String {
    format!(
        "torn {}: {} kills, {} failed, {} batches, open after kill p50/max {}/{} ms",
        text(v, "store"),
        text(v, "kills"),
        text(v, "failed_kills"),
        text(v, "batches_committed"),
        ms(num(v, &["open_after_kill", "p50_us"])),
        ms(num(v, &["open_after_kill", "max_us"])),
    )
}

/// Every table of a `store` run.
pub fn markdown(out: &Value) -> String {
    let empty = Vec::new();
    let results = out
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let of = |phase: &'static str| results.iter().filter(move |r| text(r, "phase") == phase);
    let mut md = String::new();
    for p in of("probe") {
        md += &format!(
            "\nDisk floor (4 KiB append + sync): fdatasync p50 {} ms, p99 {} ms ({:.0}/s); fsync p50 {} ms, p99 {} ms ({:.0}/s)\n",
            ms(num(p, &["fdatasync", "p50_us"])),
            ms(num(p, &["fdatasync", "p99_us"])),
            num(p, &["fdatasync", "per_s"]),
            ms(num(p, &["fsync", "p50_us"])),
            ms(num(p, &["fsync", "p99_us"])),
            num(p, &["fsync", "per_s"]),
        );
    }
    md += "\n| store | offered ops/s | achieved ops/s | commits/s | batch mean / p99 | op latency p50 / p99 / max (ms) | commit p50 / p99 (ms) | CPU s per 1M ops (store / writer) | RSS MB | disk MB | load |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for v in of("steady") {
        md += &format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} / {:.0} | {} / {} / {} | {} / {} | {:.2} / {:.2} | {:.0} | {:.0} | {} |\n",
            text(v, "store"),
            text(v, "offered_ops_per_s"),
            num(v, &["achieved_ops_per_s"]),
            num(v, &["commits_per_s"]),
            num(v, &["batch", "mean"]),
            num(v, &["batch", "p99"]),
            ms(num(v, &["op_latency", "p50_us"])),
            ms(num(v, &["op_latency", "p99_us"])),
            ms(num(v, &["op_latency", "max_us"])),
            ms(num(v, &["commit_time", "p50_us"])),
            ms(num(v, &["commit_time", "p99_us"])),
            num(v, &["cpu_s_per_1m_ops", "store"]),
            num(v, &["cpu_s_per_1m_ops", "writer_thread"]),
            num(v, &["rss_bytes"]) / MB,
            num(v, &["disk_after", "allocated_bytes"]) / MB,
            load(v),
        );
    }
    md += "\n| store | fill (s, msgs/s) | disk after fill MB | clean reopen: open / open + rebuild (s) | RSS MB after open / rebuild | disk MB after deleting half / settled / compacted | compact s | after kill -9: open / open + rebuild (s) | messages recovered / live at last report |\n|---|---|---|---|---|---|---|---|---|\n";
    for f in of("fill") {
        let store = text(f, "store");
        let find = |phase: &str| {
            results
                .iter()
                .find(|r| text(r, "phase") == phase && text(r, "store") == store)
        };
        let (Some(clean), Some(kill)) = (find("reopen-clean"), find("reopen-after-kill")) else {
            continue;
        };
        md += &format!(
            "| {store} | {:.1}, {:.0} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.1} | {:.2} / {:.2} | {:.0} / {:.0} |\n",
            num(f, &["secs"]),
            num(f, &["messages_per_s"]),
            num(f, &["disk_after_fill", "allocated_bytes"]) / MB,
            num(clean, &["open_s"]),
            num(clean, &["open_and_scan_s"]),
            num(clean, &["rss_after_open_bytes"]) / MB,
            num(clean, &["rss_after_scan_bytes"]) / MB,
            num(clean, &["disk_after_delete", "allocated_bytes"]) / MB,
            num(clean, &["disk_after_settle", "allocated_bytes"]) / MB,
            num(clean, &["disk_after_compact", "allocated_bytes"]) / MB,
            num(clean, &["compact_s"]),
            num(kill, &["open_s"]),
            num(kill, &["open_and_scan_s"]),
            num(kill, &["messages"]),
            num(kill, &["live_at_last_report"]),
        );
    }
    md += "\n| store | kills | failed | batches committed | open after kill p50 / max (ms) |\n|---|---|---|---|---|\n";
    for v in of("torn") {
        md += &format!(
            "| {} | {} | {} | {} | {} / {} |\n",
            text(v, "store"),
            text(v, "kills"),
            text(v, "failed_kills"),
            text(v, "batches_committed"),
            ms(num(v, &["open_after_kill", "p50_us"])),
            ms(num(v, &["open_after_kill", "max_us"])),
        );
    }
    md
}
