//! `hawking replay --capture FILE`: the NetFlow/IPFIX exports recorded in a packet capture,
//! decoded as `hawking serve` would have decoded them when they were sent (each exporter by
//! its address, the capture's timestamps as arrival times) and attributed with a store's
//! history, without a running server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::NetflowDecoder;
use hawking_collector::transport::capture::CaptureFile;
use hawking_enricher::{EnrichmentStage, NatIndex, StageConfig};
use hawking_schemas::pipeline::{SourceBatch, Table};
use hawking_schemas::telemetry::Telemetry;

use super::attribution::Reattribution;
use super::{Interrupted, Output, ReplayArgs, interrupted};
use crate::config::Config;

/// Flows decoded before they are attributed and written together.
const BATCH_FLOWS: usize = 8192;

pub async fn replay_capture(args: &ReplayArgs, path: &Path, config: &Config) -> anyhow::Result<()> {
    let mut capture = CaptureFile::open(path).context("--capture")?;
    let keep_closed = Duration::from_secs(config.enricher.nat.keep_closed_secs);
    let mut stage = match &args.history {
        Some(dir) => {
            hawking_query::store::require_store(dir).context("--history")?;
            let r = Reattribution::load(dir, &config.enricher)
                .await
                .with_context(|| format!("--history {}", dir.display()))?;
            eprintln!(
                "replay: history of {} clusters ({} intervals, {} NAT translations) from {}",
                r.clusters,
                r.intervals,
                r.translations,
                dir.display()
            );
            r.into_stage(keep_closed)?
        }
        None => {
            eprintln!("replay: no --history: flows are written unattributed");
            EnrichmentStage::new(
                None,
                NatIndex::default(),
                StageConfig {
                    grace: Duration::ZERO,
                    max_held_flows: 0,
                    nat_keep_closed: keep_closed,
                },
                &Telemetry::detached(),
            )?
        }
    };
    let mut decoder = NetflowDecoder::new(config.netflow.decoder.clone())
        .context("the [netflow.decoder] configuration")?;
    let mut out = Output::open(args)?;
    let mut batch = SourceBatch::default();
    let mut rows = Vec::new();
    let mut flows = 0u64;
    let mut write = |stage: &mut EnrichmentStage,
                     batch: SourceBatch,
                     out: &mut Output|
     -> anyhow::Result<u64> {
        stage.accept(batch, Instant::now());
        rows.clear();
        stage.release(Instant::now(), true, &mut rows)?;
        let mut n = 0;
        for (table, r) in &rows {
            if *table == Table::Flows {
                n += r.num_rows() as u64;
                out.write(r)?;
            }
        }
        Ok(n)
    };
    while let Some(d) = capture.next_datagram()? {
        if interrupted() {
            out.abandon();
            anyhow::bail!(Interrupted);
        }
        decoder.decode(d.from, d.payload, d.at_us, &mut batch);
        if batch.flows.len() >= BATCH_FLOWS {
            flows += write(&mut stage, std::mem::take(&mut batch), &mut out)?;
        }
    }
    flows += write(&mut stage, batch, &mut out)?;
    out.finish()?;
    let c = capture.counts();
    eprintln!(
        "replay: {} frames, {} UDP datagrams ({} fragments and {} truncated frames skipped), {flows} flows",
        c.frames, c.datagrams, c.fragments, c.truncated
    );
    Ok(())
}
