use super::*;

const T0: Duration = Duration::from_secs(1_800_000_000);
const H: Duration = Duration::from_secs(3600);

fn cert(from: Duration, ttl: Duration) -> Validity {
    Validity { not_before: from, not_after: from + ttl }
}

fn valid() -> CertState {
    let c = cert(T0, 24 * H);
    CertState::Valid { cert: c, renew_at: renew_at(c, 0) }
}

#[test]
fn renews_at_half_of_the_lifetime() {
    assert_eq!(renew_at(cert(T0, 24 * H), 0), T0 + 12 * H);
}

#[test]
fn renewal_jitter_moves_it_by_at_most_one_percent_of_the_lifetime() {
    let c = cert(T0, 24 * H);
    let span = Duration::from_secs(24 * 36); // 1% of 24h
    assert_eq!(renew_at(c, GRACE_JITTER_PPM as i64), T0 + 12 * H - span);
    assert_eq!(renew_at(c, -(GRACE_JITTER_PPM as i64)), T0 + 12 * H + span);
}

#[test]
fn renewal_ratio_is_clamped_to_the_lifetime() {
    let c = cert(T0, H);
    assert_eq!(renew_at(c, 10_000_000), T0, "ratio above 1 renews at once, not before issue");
    assert_eq!(renew_at(c, -10_000_000), T0 + H, "ratio below 0 renews at expiry");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    assert_eq!(backoff(1, 0), BACKOFF_BASE / 2);
    assert_eq!(backoff(1, 1_000_000), BACKOFF_BASE);
    assert_eq!(backoff(3, 0), BACKOFF_BASE * 2);
    assert_eq!(backoff(30, 1_000_000), BACKOFF_MAX);
    assert_eq!(backoff(30, 0), BACKOFF_MAX / 2);
}

#[test]
fn starts_by_requesting_at_once() {
    let s = CertState::start(T0);
    assert_eq!(s, CertState::Requesting { failures: 0, retry_at: T0 });
    assert!(s.wants_request(T0));
}

#[test]
fn requesting_then_issued_is_valid_with_an_issued_event() {
    let c = cert(T0, 24 * H);
    let (s, e) = CertState::start(T0).on_issued(c, T0 + 12 * H);
    assert_eq!(s, CertState::Valid { cert: c, renew_at: T0 + 12 * H });
    assert_eq!(e, CertEvent::Issued { not_after: T0 + 24 * H });
    assert!(!s.wants_request(T0 + 12 * H - Duration::from_secs(1)));
    assert_eq!(s.next_at(), T0 + 12 * H);
}

#[test]
fn requesting_then_failure_retries_later_and_reports_once() {
    let (s, e) = CertState::start(T0).on_failure(T0, Duration::from_secs(1), "connection refused");
    assert_eq!(s, CertState::Requesting { failures: 1, retry_at: T0 + Duration::from_secs(1) });
    assert_eq!(e, Some(CertEvent::CaUnreachable { error: "connection refused".into() }));
    assert!(!s.wants_request(T0));
    let (s, e) = s.on_failure(T0 + Duration::from_secs(1), Duration::from_secs(2), "connection refused");
    assert_eq!(s.failures(), 2);
    assert_eq!(e, None, "only the first failure of a run is reported");
}

#[test]
fn valid_at_renewal_time_becomes_renewing_and_asks_at_once() {
    let (s, e) = valid().on_time(T0 + 12 * H);
    assert_eq!(s, CertState::Renewing { cert: cert(T0, 24 * H), failures: 0, retry_at: T0 + 12 * H });
    assert_eq!(e, None);
    assert!(s.wants_request(T0 + 12 * H));
    let (same, _) = valid().on_time(T0 + 12 * H - Duration::from_secs(1));
    assert_eq!(same, valid(), "nothing happens before the renewal time");
}

#[test]
fn renewing_then_issued_is_valid_with_a_renewed_event() {
    let (s, _) = valid().on_time(T0 + 12 * H);
    let c2 = cert(T0 + 12 * H, 24 * H);
    let (s, e) = s.on_issued(c2, T0 + 24 * H);
    assert_eq!(s, CertState::Valid { cert: c2, renew_at: T0 + 24 * H });
    assert_eq!(e, CertEvent::Renewed { not_after: T0 + 36 * H });
}

#[test]
fn renewing_then_failure_keeps_the_certificate_and_backs_off() {
    let (s, _) = valid().on_time(T0 + 12 * H);
    let (s, e) = s.on_failure(T0 + 12 * H, Duration::from_secs(4), "connect timeout");
    assert_eq!(
        s,
        CertState::Renewing { cert: cert(T0, 24 * H), failures: 1, retry_at: T0 + 12 * H + Duration::from_secs(4) }
    );
    assert!(matches!(e, Some(CertEvent::CaUnreachable { .. })));
}

#[test]
fn renewing_past_expiry_becomes_expired_with_an_event() {
    let (s, _) = valid().on_time(T0 + 12 * H);
    let (s, _) = s.on_failure(T0 + 12 * H, 13 * H, "connection refused");
    assert_eq!(s.next_at(), T0 + 24 * H, "wakes at expiry before the retry");
    let (s, e) = s.on_time(T0 + 24 * H);
    assert_eq!(s, CertState::Expired { failures: 1, retry_at: T0 + 25 * H });
    assert_eq!(e, Some(CertEvent::Expired));
}

#[test]
fn expired_then_failure_stays_expired() {
    let s = CertState::Expired { failures: 3, retry_at: T0 };
    let (s, e) = s.on_failure(T0, Duration::from_secs(30), "connection refused");
    assert_eq!(s, CertState::Expired { failures: 4, retry_at: T0 + Duration::from_secs(30) });
    assert_eq!(e, None);
}

#[test]
fn expired_then_issued_is_valid_with_an_issued_event() {
    let s = CertState::Expired { failures: 3, retry_at: T0 };
    let c = cert(T0, H);
    let (s, e) = s.on_issued(c, T0 + H / 2);
    assert_eq!(s, CertState::Valid { cert: c, renew_at: T0 + H / 2 });
    assert_eq!(e, CertEvent::Issued { not_after: T0 + H });
}

#[test]
fn roots_change_makes_a_valid_certificate_renew_now() {
    let s = valid().on_roots_changed(T0 + H);
    assert_eq!(s, CertState::Renewing { cert: cert(T0, 24 * H), failures: 0, retry_at: T0 + H });
    let waiting = CertState::Requesting { failures: 2, retry_at: T0 + H };
    assert_eq!(waiting.on_roots_changed(T0), CertState::Requesting { failures: 2, retry_at: T0 });
}
