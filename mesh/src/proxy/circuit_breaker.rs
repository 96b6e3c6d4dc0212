//! Envoy's circuit breakers of one cluster, as Istio configures them from a
//! DestinationRule's `connectionPool` (Istio: "Circuit Breaking" task; Envoy:
//! "Circuit breaking" in the architecture overview): the limits are per client proxy per
//! cluster, all endpoints together.
//!
//! Owns the four counters and their verdicts: connections open or being opened
//! (`tcp.maxConnections`), requests waiting for a connection
//! (`http.http1MaxPendingRequests`), requests in flight (`http.http2MaxRequests`) and
//! retries in flight (`http.maxRetries`, or `retryBudget`). Pure: the pool calls it under
//! its own lock and keeps every count in step with what it does. Does not own
//! connections, the pending queue, nor which waiter a freed connection goes to (`pool`);
//! the thresholds are the cluster's `pool::Limits`.

use super::pool::{Limits, Overflow};

/// The breakers' counters of one cluster, and the thresholds they are held to.
#[derive(Debug)]
pub(super) struct Breakers {
    limits: Limits,
    connections: u32,
    pending: u32,
    requests: u32,
    retries: u32,
}

impl Breakers {
    pub(super) fn new(limits: Limits) -> Breakers {
        Breakers { limits, connections: 0, pending: 0, requests: 0, retries: 0 }
    }

    /// Admits one more request in flight, or overflows at `max_requests`.
    pub(super) fn admit_request(&mut self) -> Result<(), Overflow> {
        if self.requests >= self.limits.max_requests {
            return Err(Overflow::Requests);
        }
        self.requests += 1;
        Ok(())
    }

    pub(super) fn end_request(&mut self) {
        assert!(self.requests > 0, "a request ended that was never admitted");
        self.requests -= 1;
    }

    /// Admits one more request waiting for a connection, or overflows at
    /// `max_pending_requests`.
    pub(super) fn admit_pending(&mut self) -> Result<(), Overflow> {
        if self.pending >= self.limits.max_pending_requests {
            return Err(Overflow::Pending);
        }
        self.pending += 1;
        assert!(self.pending <= self.requests, "a pending request is also a request in flight");
        Ok(())
    }

    pub(super) fn end_pending(&mut self) {
        assert!(self.pending > 0, "a pending request ended that was never admitted");
        self.pending -= 1;
    }

    /// Whether another connection fits under `max_connections`.
    pub(super) fn has_connection_slot(&self) -> bool {
        self.connections < self.limits.max_connections
    }

    /// Whether a request may open a connection to a host that has `host_open` open: under
    /// `max_connections`, or when the host has none at all (Envoy's
    /// `tryCreateNewConnection`: a host is never left with pending requests and no
    /// connection because other hosts hold the cluster's connections).
    pub(super) fn may_connect(&self, host_open: u32) -> bool {
        self.has_connection_slot() || host_open == 0
    }

    pub(super) fn connection_opened(&mut self) {
        self.connections = self.connections.checked_add(1).expect("connection count overflows u32");
    }

    pub(super) fn connections_closed(&mut self, n: u32) {
        assert!(n <= self.connections, "closed {n} connections of {} open", self.connections);
        self.connections -= n;
    }

    /// Admits one more retry in flight: at most `max_retries`, or with a retry budget,
    /// `max(min_concurrency, ⌊percent% × (requests + pending)⌋)`. `false`: overflow.
    pub(super) fn admit_retry(&mut self) -> bool {
        let allowed = match self.limits.retry_budget {
            Some(b) => {
                let share = (b.percent / 100.0 * f64::from(self.requests + self.pending)).floor() as u32;
                share.max(b.min_concurrency)
            }
            None => self.limits.max_retries,
        };
        if self.retries >= allowed {
            return false;
        }
        self.retries += 1;
        true
    }

    pub(super) fn end_retry(&mut self) {
        assert!(self.retries > 0, "a retry ended that was never admitted");
        self.retries -= 1;
    }

    /// Connections open or being opened.
    pub(super) fn connections(&self) -> u32 {
        self.connections
    }

    /// Requests in flight and requests waiting for a connection.
    #[cfg(test)]
    pub(super) fn load(&self) -> (u32, u32) {
        (self.requests, self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::RetryBudget;
    use super::*;

    fn breakers(f: impl FnOnce(&mut Limits)) -> Breakers {
        let mut limits = Limits::default();
        f(&mut limits);
        Breakers::new(limits)
    }

    #[test]
    fn a_request_beyond_max_requests_overflows_until_one_ends() {
        let mut b = breakers(|l| l.max_requests = 2);
        assert_eq!(b.admit_request(), Ok(()));
        assert_eq!(b.admit_request(), Ok(()));
        assert_eq!(b.admit_request(), Err(Overflow::Requests));
        b.end_request();
        assert_eq!(b.admit_request(), Ok(()));
    }

    #[test]
    fn a_pending_request_beyond_max_pending_overflows_until_one_gets_a_connection() {
        let mut b = breakers(|l| l.max_pending_requests = 1);
        b.admit_request().unwrap();
        b.admit_request().unwrap();
        assert_eq!(b.admit_pending(), Ok(()));
        assert_eq!(b.admit_pending(), Err(Overflow::Pending));
        b.end_pending();
        assert_eq!(b.admit_pending(), Ok(()));
        assert_eq!(b.load(), (2, 1));
    }

    #[test]
    fn a_host_without_connections_may_connect_even_at_max_connections() {
        let mut b = breakers(|l| l.max_connections = 1);
        assert!(b.may_connect(0) && b.may_connect(1));
        b.connection_opened();
        assert!(!b.has_connection_slot());
        assert!(!b.may_connect(1), "a host with a connection queues at the limit");
        assert!(b.may_connect(0), "a host with none gets one");
        b.connections_closed(1);
        assert!(b.may_connect(1));
    }

    #[test]
    fn max_retries_bounds_retries_in_flight() {
        let mut b = breakers(|l| l.max_retries = 1);
        assert!(b.admit_retry());
        assert!(!b.admit_retry());
        b.end_retry();
        assert!(b.admit_retry());
    }

    #[test]
    fn retry_budget_allows_its_share_of_requests_and_pending_but_at_least_its_floor() {
        let mut b = breakers(|l| l.retry_budget = Some(RetryBudget { percent: 20.0, min_concurrency: 2 }));
        // Idle: the floor.
        assert!(b.admit_retry() && b.admit_retry());
        assert!(!b.admit_retry());
        // 20 requests, 5 of them still pending: the budget is 20% of in flight plus
        // pending as the pool counts them (a pending request is also in flight), 25: 5.
        for _ in 0..15 {
            b.admit_request().unwrap();
        }
        for _ in 0..5 {
            b.admit_request().unwrap();
            b.admit_pending().unwrap();
        }
        assert!(b.admit_retry() && b.admit_retry() && b.admit_retry());
        assert!(!b.admit_retry(), "a sixth concurrent retry exceeds 20% of 25");
    }

    #[test]
    #[should_panic(expected = "never admitted")]
    fn ending_a_request_that_was_never_admitted_is_a_bug() {
        breakers(|_| ()).end_request();
    }

    #[test]
    #[should_panic(expected = "closed 2 connections of 1 open")]
    fn closing_more_connections_than_are_open_is_a_bug() {
        let mut b = breakers(|_| ());
        b.connection_opened();
        b.connections_closed(2);
    }
}
