//! Who held an address at a time: the decision the enricher makes for a flow endpoint at
//! that instant, through a stored source-NAT translation when a port names a NAT's outside
//! end, answered from stored history rows. `hawking whois`, the SQL table function
//! `whois(...)` and replay all ask it here; the store layer only finds the rows.

use arrow::array::RecordBatch;
use hawking_schemas::columns::ColumnError;

use crate::attribute::{Resolved, resolve_endpoint, resolve_translated};
use crate::history::{Interval, IpHistory};
use crate::keeper::{HistoryKeeper, Mode};
use crate::nat::{ANY_CLUSTER, NatIndex, NatTrust, Translation, nat_rows};

/// One question for the history: who held `addr` at `at` (in `cluster`, or in every
/// cluster the history knows), optionally with the port and protocol it used then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoisQuery {
    pub addr: u128,
    pub at: i64,
    pub cluster: Option<String>,
    pub port: u16,
    pub protocol: u8,
}

/// The stored rows a question needs: the translations of the queried outside end (only when
/// a port is given), the intervals of the address and of those translations' inside
/// addresses (all of them, so ranges and neighbours are right), and the gaps.
pub struct WhoisRows {
    pub translations: Vec<RecordBatch>,
    pub intervals: Vec<RecordBatch>,
    pub gaps: Vec<RecordBatch>,
}

/// The answer: the address's history as stored, and the decision.
pub struct WhoisAnswer {
    keeper: HistoryKeeper,
    clusters: Vec<u16>,
    pub query: WhoisQuery,
    pub resolved: Resolved,
    /// The source-NAT translations the answer went through (the address and port were a
    /// NAT's outside end then), with their remote ends.
    pub translations: Vec<(Translation, Option<(u128, u16)>)>,
}

/// The addresses whose intervals a question needs, given the translations found for it.
pub fn addresses_to_load(
    query: &WhoisQuery,
    translations: &[RecordBatch],
) -> Result<Vec<u128>, ColumnError> {
    let mut addrs = vec![query.addr];
    for b in translations {
        addrs.extend(nat_rows(b)?.iter().map(|r| r.inside_ip));
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Resolves `query` against `rows`.
pub fn answer(query: WhoisQuery, rows: &WhoisRows) -> Result<WhoisAnswer, ColumnError> {
    let mut keeper = HistoryKeeper::new(Mode::Import);
    keeper.load(&rows.intervals, &rows.gaps)?;
    let history = keeper.history();
    let clusters: Vec<u16> = match &query.cluster {
        Some(name) => history.find_cluster(name).into_iter().collect(),
        None => (0..history.clusters().len() as u16).collect(),
    };
    let mut nat = NatIndex::default().with_trust(NatTrust::STORED);
    nat.load(&rows.translations, |name| {
        history.find_cluster(name).unwrap_or(ANY_CLUSTER)
    })?;
    let found = nat.lookup_any_remote(query.protocol, query.addr, query.port, query.at, query.at);
    let resolved = resolve_translated(
        history,
        &clusters,
        found.translations(),
        query.at,
        query.at,
        query.protocol,
    );
    let translations = match resolved {
        Some(_) => found
            .translations()
            .iter()
            .map(|t| (*t, nat.remote_of(t.id)))
            .collect(),
        None => Vec::new(),
    };
    let resolved = resolved.unwrap_or_else(|| {
        resolve_endpoint(
            history,
            &clusters,
            query.addr,
            query.at,
            query.at,
            query.port,
            query.protocol,
        )
    });
    Ok(WhoisAnswer {
        keeper,
        clusters,
        query,
        resolved,
        translations,
    })
}

impl WhoisAnswer {
    pub fn history(&self) -> &IpHistory {
        self.keeper.history()
    }

    /// The cluster the address was resolved in, when exactly one applies.
    pub fn cluster_name(&self) -> Option<&str> {
        (self.resolved.cluster != u16::MAX)
            .then(|| self.history().cluster_name(self.resolved.cluster))
    }

    /// The interval in which the resolved owner held the address (behind a NAT: the inside
    /// address) at the queried time.
    pub fn held_interval(&self) -> Option<Interval> {
        let owner = self.resolved.owner?;
        let cluster = self
            .history()
            .clusters()
            .get(self.resolved.cluster as usize)?;
        let at = self.query.at;
        let addrs = match self.translations.as_slice() {
            [] => vec![self.query.addr],
            via => via.iter().map(|(t, _)| t.inside_ip).collect(),
        };
        addrs.iter().find_map(|addr| {
            cluster
                .intervals(*addr)
                .iter()
                .rev()
                .find(|iv| iv.owner == owner && iv.from <= at && iv.to >= at)
                .copied()
        })
    }

    /// Gaps covering the queried time: (cluster, start, end) with `OPEN` for a gap that lasts.
    pub fn gaps_at(&self) -> Vec<(String, i64, i64)> {
        let history = self.history();
        let at = self.query.at;
        self.clusters
            .iter()
            .flat_map(|c| {
                history.clusters()[*c as usize]
                    .gaps()
                    .iter()
                    .filter(|(s, e)| *s <= at && *e >= at)
                    .map(|(s, e)| (history.cluster_name(*c).to_string(), *s, *e))
            })
            .collect()
    }

    /// Every interval of the address in the clusters asked about, oldest first.
    pub fn intervals(&self) -> Vec<(u16, Interval)> {
        let mut all: Vec<(u16, Interval)> = self
            .clusters
            .iter()
            .flat_map(|c| {
                self.history().clusters()[*c as usize]
                    .intervals(self.query.addr)
                    .iter()
                    .map(|iv| (*c, *iv))
            })
            .collect();
        all.sort_by_key(|(_, iv)| iv.from);
        all
    }
}
