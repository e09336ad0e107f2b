//! Data sets that arrived before their template, held (bounded in bytes and age) with their
//! own packet header so that, once the template comes, their times are resolved against the
//! header they were sent with.
//!
//! netflow_parser has a pending-flow cache too, but it replays held records under the header
//! of the packet that brought the template, which shifts every sysUpTime- and delta-relative
//! time by the gap between the two packets; wrong times are worse than a held set.

use std::collections::VecDeque;

use super::ScopeKey;
use super::wire::Header;

#[derive(Debug)]
pub struct PendingSet {
    pub scope: ScopeKey,
    pub template_id: u16,
    pub header: Header,
    pub received_at_us: i64,
    pub body: Vec<u8>,
}

/// FIFO of held sets with a byte budget and a maximum age.
#[derive(Debug)]
pub struct PendingSets {
    sets: VecDeque<PendingSet>,
    bytes: usize,
    max_bytes: usize,
    max_age_us: i64,
}

impl PendingSets {
    pub fn new(max_bytes: usize, max_age_us: i64) -> Self {
        PendingSets {
            sets: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age_us,
        }
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds a set. Sets pushed out by the byte budget, and the set itself if it can never
    /// fit, are passed to `dropped`.
    pub fn hold(&mut self, set: PendingSet, mut dropped: impl FnMut(&PendingSet)) {
        if set.body.len() > self.max_bytes {
            dropped(&set);
            return;
        }
        while self.bytes + set.body.len() > self.max_bytes {
            match self.sets.pop_front() {
                Some(old) => {
                    self.bytes -= old.body.len();
                    dropped(&old);
                }
                None => break,
            }
        }
        self.bytes += set.body.len();
        self.sets.push_back(set);
    }

    /// Drops sets older than the maximum age at `now_us`.
    pub fn expire(&mut self, now_us: i64, mut dropped: impl FnMut(&PendingSet)) {
        while let Some(front) = self.sets.front() {
            if now_us - front.received_at_us <= self.max_age_us {
                break;
            }
            let old = self.sets.pop_front().expect("front exists");
            self.bytes -= old.body.len();
            dropped(&old);
        }
    }

    /// Removes and returns, oldest first, the held sets waiting for `template_id` of `scope`.
    pub fn take(&mut self, scope: &ScopeKey, template_id: u16) -> Vec<PendingSet> {
        if !self
            .sets
            .iter()
            .any(|s| s.template_id == template_id && s.scope == *scope)
        {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.sets.len());
        for s in self.sets.drain(..) {
            if s.template_id == template_id && s.scope == *scope {
                self.bytes -= s.body.len();
                taken.push(s);
            } else {
                kept.push_back(s);
            }
        }
        self.sets = kept;
        taken
    }

    /// Drops every held set of `scope` (its exporter's state was evicted).
    pub fn forget_scope(&mut self, scope: &ScopeKey, mut dropped: impl FnMut(&PendingSet)) {
        let bytes = &mut self.bytes;
        self.sets.retain(|s| {
            if s.scope == *scope {
                *bytes -= s.body.len();
                dropped(s);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::netflow::wire::Version;
    use std::net::SocketAddr;

    fn scope(port: u16) -> ScopeKey {
        ScopeKey {
            exporter: SocketAddr::from(([127, 0, 0, 1], port)),
            version: Version::Ipfix,
            domain: 0,
        }
    }

    fn set(port: u16, id: u16, at: i64, len: usize) -> PendingSet {
        let header = Header {
            version: Version::Ipfix,
            export_ms: 0,
            sys_uptime_ms: None,
            domain: 0,
            sequence: 0,
            v5_sampling: 0,
            count: 0,
        };
        PendingSet {
            scope: scope(port),
            template_id: id,
            header,
            received_at_us: at,
            body: vec![0; len],
        }
    }

    #[test]
    fn budget_evicts_oldest_and_reports_them() {
        let mut p = PendingSets::new(100, 1_000_000);
        let mut dropped = vec![];
        p.hold(set(1, 256, 0, 60), |s| dropped.push(s.received_at_us));
        p.hold(set(1, 257, 1, 60), |s| dropped.push(s.received_at_us));
        assert_eq!(dropped, vec![0]);
        p.hold(set(1, 258, 2, 500), |s| dropped.push(s.received_at_us));
        assert_eq!(
            dropped,
            vec![0, 2],
            "a set larger than the budget is dropped itself"
        );
        assert_eq!((p.len(), p.bytes()), (1, 60));
    }

    #[test]
    fn take_returns_only_that_scope_and_template_in_order() {
        let mut p = PendingSets::new(1000, 1_000_000);
        for (port, id, at) in [(1, 256, 0), (2, 256, 1), (1, 257, 2), (1, 256, 3)] {
            p.hold(set(port, id, at, 10), |_| panic!("within budget"));
        }
        let got: Vec<i64> = p
            .take(&scope(1), 256)
            .iter()
            .map(|s| s.received_at_us)
            .collect();
        assert_eq!(got, vec![0, 3]);
        assert_eq!((p.len(), p.bytes()), (2, 20));
    }

    #[test]
    fn expiry_drops_sets_past_their_age() {
        let mut p = PendingSets::new(1000, 100);
        p.hold(set(1, 256, 0, 10), |_| {});
        p.hold(set(1, 256, 150, 10), |_| {});
        let mut n = 0;
        p.expire(200, |_| n += 1);
        assert_eq!((n, p.len()), (1, 1));
    }
}
