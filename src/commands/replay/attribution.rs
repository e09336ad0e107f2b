//! What replay attributes with: the history and NAT translations as they are stored now,
//! and the clusters' exporter rules and ranges from the configuration — the same lookup the
//! enrichment stage makes, applied to flows read back from the store.

use std::path::Path;

use anyhow::Context;
use arrow::array::{ArrayRef, RecordBatch};
use hawking_enricher::nat::{ANY_CLUSTER, NatTrust};
use hawking_enricher::{
    BatchAttribution, ClusterSelector, Clusters, EnricherConfig, EnrichmentStage, HistoryKeeper,
    HistoryState, IpHistory, Mode, NatIndex, StageConfig, attribute_batch, attribution_columns,
};
use hawking_schemas::FlowBatch;
use hawking_schemas::flow::ENDPOINT_COLUMNS;
use hawking_schemas::pipeline::Table;
use hawking_schemas::telemetry::Telemetry;

/// The history, translations and cluster rules replay attributes with.
pub struct Reattribution {
    keeper: HistoryKeeper,
    selector: ClusterSelector,
    nat: NatIndex,
    /// What was loaded: clusters, intervals and translations (for the start-up line).
    pub clusters: usize,
    pub intervals: usize,
    pub translations: usize,
}

impl Reattribution {
    /// Loads everything stored in `data`. Without configured clusters every cluster of the
    /// stored history is consulted for every flow (an owner is named only if exactly one
    /// cluster has the address), as `hawking serve` does for exporters no cluster lists.
    pub async fn load(data: &Path, config: &EnricherConfig) -> anyhow::Result<Reattribution> {
        let stored = hawking_query::history::load_history(data)
            .await
            .context("reading the stored history")?;
        let mut keeper = HistoryKeeper::new(Mode::Import);
        let intervals = keeper
            .load(&stored.intervals, &stored.gaps)
            .context("reading the stored history")?;
        let mut selector = config.apply(keeper.history_mut())?;
        for c in 0..keeper.history().clusters().len() as u16 {
            selector.add_cluster(c);
        }
        // Every translation ever stored: replay may reach back past any in-memory bound.
        let ctx = hawking_query::open_session(data, &Default::default()).await?;
        let rows = ctx
            .sql("SELECT * FROM nat_history")
            .await?
            .collect()
            .await
            .context("reading nat_history")?;
        // When NATs were silent was never stored: replay trusts the stored translations as
        // they are (those closed by the idle bound were stored closed).
        let mut nat =
            NatIndex::new(config.nat.clock_skew_ms as i64 * 1000).with_trust(NatTrust::STORED);
        let history = keeper.history();
        let translations = nat
            .load(&rows, |name| {
                history.find_cluster(name).unwrap_or(ANY_CLUSTER)
            })
            .context("reading nat_history")?;
        Ok(Reattribution {
            clusters: keeper.history().clusters().len(),
            keeper,
            selector,
            nat,
            intervals,
            translations,
        })
    }

    /// An enrichment stage attributing with this history and these translations, for flows
    /// decoded here and now (a capture's): it applies the NAT events that come with them,
    /// as `hawking serve`'s stage does, and holds nothing back.
    pub fn into_stage(
        self,
        nat_keep_closed: std::time::Duration,
    ) -> anyhow::Result<EnrichmentStage> {
        let clusters = Clusters {
            keeper: self.keeper,
            selector: self.selector,
            watched: Vec::new(),
            state: HistoryState::default(),
            state_path: None,
        };
        Ok(EnrichmentStage::new(
            Some(clusters),
            self.nat,
            StageConfig {
                grace: std::time::Duration::ZERO,
                max_held_flows: 0,
                nat_keep_closed,
            },
            &Telemetry::detached(),
        )?)
    }

    /// `rows` (stored flows, any text encoding) with their attribution columns replaced by
    /// today's answer; every other column is kept as it was read.
    pub fn reattribute(&self, rows: &RecordBatch) -> anyhow::Result<RecordBatch> {
        let attribution = self.attribute(rows)?;
        let columns = attribution_columns(self.history(), &attribution);
        replace_attribution(rows, columns)
    }

    /// Today's answer for both endpoints of every stored flow of `rows`.
    pub fn attribute(&self, rows: &RecordBatch) -> anyhow::Result<BatchAttribution> {
        let flows = FlowBatch::from_stored(rows)?;
        Ok(attribute_batch(
            self.history(),
            &self.nat,
            &self.selector,
            &flows,
        ))
    }

    /// The history replay attributes with (names the owners of an attribution).
    pub fn history(&self) -> &IpHistory {
        self.keeper.history()
    }
}

/// The names of the attribution columns, `src_*` then `dst_*`, as `attribution_columns`
/// builds them.
pub fn attribution_column_names() -> Vec<String> {
    ["src", "dst"]
        .iter()
        .flat_map(|side| ENDPOINT_COLUMNS.iter().map(move |c| format!("{side}_{c}")))
        .collect()
}

/// A batch of the flows table's columns: the attribution columns from `new` (in
/// [`attribution_column_names`] order), every other column from `rows`, which may or may
/// not hold the stored attribution.
fn replace_attribution(rows: &RecordBatch, new: Vec<ArrayRef>) -> anyhow::Result<RecordBatch> {
    let names = attribution_column_names();
    let schema = Table::Flows.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match names.iter().position(|n| n == f.name()) {
            Some(i) => Ok(new[i].clone()),
            None => rows
                .column_by_name(f.name())
                .cloned()
                .with_context(|| format!("stored flows have no column {}", f.name())),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}
