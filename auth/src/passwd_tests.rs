//! Unit tests of the password file: parsing, editing, saving, verifying, and keeping hashes out of logs.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use super::*;

fn cheap(users: &[(&str, &str)]) -> PasswordFile {
    let mut f = PasswordFile::empty();
    for (u, p) in users {
        f.set_with_cost_for_tests(u, p);
    }
    f
}

#[test]
fn dummy_hash_has_default_cost() {
    check_hash(DUMMY_HASH).unwrap();
    let hash = PasswordHash::new(DUMMY_HASH).unwrap();
    let params = Params::try_from(&hash).unwrap();
    assert_eq!(
        (params.m_cost(), params.t_cost(), params.p_cost()),
        (HASH_M_COST_KIB, HASH_T_COST, HASH_P_COST)
    );
}

#[test]
fn verify_accepts_right_and_refuses_wrong_or_unknown() {
    let f = cheap(&[("alice", "s3cret"), ("bob", "hunter2")]);
    assert!(f.verify_blocking("alice", b"s3cret"));
    assert!(!f.verify_blocking("alice", b"s3cret "));
    assert!(!f.verify_blocking("alice", b""));
    assert!(
        !f.verify_blocking("carol", b"s3cret"),
        "unknown user, someone else's password"
    );
    assert!(!PasswordFile::empty().verify_blocking("alice", b"x"));
}

#[test]
fn unknown_users_cost_the_same_argon2_work() {
    let f = cheap(&[("alice", "s3cret")]);
    let known = f.material("alice");
    let unknown = f.material("mallory");
    assert!(known.known && !unknown.known);
    let params = |phc: &str| Params::try_from(&PasswordHash::new(phc).unwrap()).unwrap();
    assert_eq!(
        params(&known.phc),
        params(&unknown.phc),
        "same cost parameters"
    );
    assert_eq!(
        params(&PasswordFile::empty().material("x").phc).m_cost(),
        HASH_M_COST_KIB
    );

    // And in work, loosely: the verifying thread's own CPU time (other processes' load does not count in it), the
    // least of a few interleaved runs of each, within 3× of each other in at least one of several rounds; an
    // unknown user that skipped argon2 would take microseconds against milliseconds in every round.
    let mut file = PasswordFile::empty();
    let moderate = Params::new(4 * 1024, 1, 1, None).unwrap();
    file.set_with(
        &Argon2::new(Algorithm::Argon2id, Version::V0x13, moderate),
        "alice",
        "s3cret",
    )
    .unwrap();
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let time = |user: &str| {
        let start = cpu();
        assert!(!file.verify_blocking(user, b"wrong"));
        cpu() - start
    };
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let (mut k, mut u) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            k = k.min(time("alice"));
            u = u.min(time("mallory"));
        }
        if u * 3 > k && k * 3 > u {
            return;
        }
        rounds.push((k, u));
    }
    panic!("known vs unknown user, fastest per round: {rounds:?}");
}

#[test]
fn set_replaces_and_rejects_bad_input() {
    let mut f = cheap(&[("alice", "one")]);
    f.set_with_cost_for_tests("alice", "two");
    assert_eq!(f.len(), 1);
    assert!(f.verify_blocking("alice", b"two"));
    assert!(!f.verify_blocking("alice", b"one"));
    for bad in ["", "a:b", "#x", "a b", "a\nb", "a\0b"] {
        assert!(
            matches!(f.set(bad, "pw"), Err(AuthError::InvalidUsername(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(f.set("bob", ""), Err(AuthError::EmptyPassword)));
}

#[test]
fn parse_reports_each_bad_line() {
    let good = cheap(&[("alice", "pw")]).render();
    let text = format!(
        "# users\n\n{good}no-colon-here\nbob:not-a-hash\n:$argon2id$x\ncarol:$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nhuge:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n{good}"
    );
    let err = PasswordFile::parse(Path::new("passwd"), &text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![4, 5, 6, 7, 8, 9], "{err}");
    assert!(err.to_string().contains("passwd:5:5:"), "{err}");
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert!(
        !err.to_string().contains("aGFzaGhh"),
        "no hash in messages: {err}"
    );
}

#[test]
fn check_hash_errors_are_typed() {
    assert!(matches!(
        check_hash("not-a-hash"),
        Err(HashError::NotPhc(_))
    ));
    assert_eq!(
        check_hash("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
        Err(HashError::Algorithm("argon2i".into()))
    );
    assert_eq!(
        check_hash("$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
        Err(HashError::CostTooHigh {
            m: 4_194_304,
            t: 1,
            p: 1
        })
    );
    assert_eq!(
        check_hash("$argon2id$v=19$m=64,t=1,p=1"),
        Err(HashError::Incomplete)
    );
}

#[test]
fn debug_never_shows_hashes() {
    let f = cheap(&[("alice", "pw")]);
    let debug = format!("{f:?}");
    assert_eq!(debug, "PasswordFile { users: 1 }");
    assert!(!debug.contains("argon2"));
}

#[test]
fn save_is_atomic_private_and_keeps_comments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    let mut f = PasswordFile::parse(&path, "# fleet users\n\n").unwrap();
    f.set_with_cost_for_tests("alice", "pw");
    f.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# fleet users\n\nalice:$argon2id$"),
        "{text}"
    );
    let back = PasswordFile::load(&path).unwrap();
    assert!(back.verify_blocking("alice", b"pw"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[test]
fn set_password_creates_then_updates_with_the_default_cost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    set_password(&path, "alice", "first").unwrap();
    let started = Instant::now();
    set_password(&path, "bob", "second").unwrap();
    eprintln!(
        "one default-cost hash (debug build): {:?}",
        started.elapsed()
    );
    let f = PasswordFile::load(&path).unwrap();
    assert_eq!(f.len(), 2);
    let hash = PasswordHash::new(&f.material("bob").phc).unwrap();
    let params = Params::try_from(&hash).unwrap();
    assert_eq!(
        (params.m_cost(), params.t_cost(), params.p_cost()),
        (HASH_M_COST_KIB, HASH_T_COST, HASH_P_COST)
    );
    assert!(f.verify_blocking("bob", b"second"));
    assert!(matches!(
        set_password(&path, "a:b", "x"),
        Err(AuthError::InvalidUsername(_))
    ));
    std::fs::write(&path, "broken line\n").unwrap();
    assert!(matches!(
        set_password(&path, "alice", "x"),
        Err(AuthError::Config(_))
    ));
}
