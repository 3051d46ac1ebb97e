//! Smoke tests of the store comparison: a few hundred ops per store in a temp dir, never the benchmark itself.

use super::*;

const KINDS: [Kind; 4] = [Kind::Redb, Kind::RedbQr, Kind::Fjall, Kind::FjallSd];

/// A few hundred ops of the steady workload against each store: the group commit runs and reports.
#[test]
fn steady_smoke_each_store() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let r = steady::run(&steady::SteadyConfig {
            kind,
            dir: dir.path().to_path_buf(),
            cache_bytes: 4 * MIB,
            sessions: 20,
            queued: 5,
            producers: 2,
            rate: Rate::PerSecond(2_000.0),
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            batch_cap: 64,
            payload: 100,
        })
        .unwrap();
        assert_eq!(r["fill"]["ops"], 120, "{kind:?}: {r}");
        assert!(
            r["achieved_ops_per_s"].as_f64().unwrap() > 0.0,
            "{kind:?}: {r}"
        );
        assert!(r["disk_after"]["allocated_bytes"].as_u64().unwrap() > 0);
    }
}

/// Fill, reopen with a rebuild, delete half: the counts add up for each store.
#[test]
fn recovery_smoke_each_store() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut progress = Vec::new();
        recovery::fill(
            &recovery::FillConfig {
                kind,
                dir: dir.path().to_path_buf(),
                cache_bytes: 4 * MIB,
                sessions: 30,
                messages: 300,
                payload: 50,
                batch_cap: 100,
                churn: Some(Duration::from_millis(20)),
            },
            &mut progress,
        )
        .unwrap();
        let progress = String::from_utf8(progress).unwrap();
        let live: u64 = progress
            .lines()
            .rfind(|l| l.starts_with("c "))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .unwrap();
        let r = recovery::scan(&recovery::ScanConfig {
            kind,
            dir: dir.path().to_path_buf(),
            cache_bytes: 4 * MIB,
            delete_half: true,
            batch_cap: 100,
            settle: Duration::from_millis(200),
        })
        .unwrap();
        assert_eq!(r["messages"], live, "{kind:?}: {r}");
        assert_eq!(r["session_records"], 30, "{kind:?}: {r}");
        assert_eq!(r["malformed_keys"], 0);
        assert!(r["deleted"].as_u64().unwrap() > 100, "{kind:?}: {r}");
    }
}

/// The torn-write writer and checker agree on a store that was stopped cleanly, across two writer runs, and
/// the checker notices a batch that is missing.
#[test]
fn torn_writer_and_checker_agree() {
    let shape = torn::TornShape {
        lag: 5,
        max_batch: 20,
        sessions: 50,
        payload: 40,
    };
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let long = Duration::from_secs(30);
        let last = torn::write(kind, dir.path(), 4 * MIB, shape, long, Some(8), &mut out).unwrap();
        assert_eq!(last, Some(7));
        assert_eq!(torn::last_reported(&out[..]), Some(7));
        let v = torn::verify(kind, dir.path(), 4 * MIB, shape, Some(7), None);
        assert!(v.failures.is_empty(), "{kind:?}: {v:?}");
        let expected: u64 = (3..=7).map(|b| shape.len(b)).sum();
        assert_eq!(v.messages, expected);
        // A second writer continues after the marker.
        let last = torn::write(
            kind,
            dir.path(),
            4 * MIB,
            shape,
            long,
            Some(3),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(last, Some(10));
        assert!(
            torn::verify(kind, dir.path(), 4 * MIB, shape, Some(10), Some(7))
                .failures
                .is_empty()
        );
        // Reported beyond what the store holds: a lost commit.
        let v = torn::verify(kind, dir.path(), 4 * MIB, shape, Some(12), Some(10));
        assert!(
            v.failures.iter().any(|f| f.contains("lost")),
            "{kind:?}: {v:?}"
        );
    }
}

#[test]
fn fs_type_of_root_is_known() {
    assert!(fs_type(Path::new("/")).is_some());
}
