//! `hawking replay --capture FILE`: the NetFlow/IPFIX exports recorded in a packet capture,
//! decoded as `hawking serve` would have decoded them when they were sent (each exporter by
//! its address, the capture's timestamps as arrival times) and attributed with a store's
//! history, without a running server; or, with `--send`, re-sent to a live collector with
//! the capture's pacing, scaled, or at a fixed rate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::NetflowDecoder;
use hawking_collector::decode::packets::{MeterConfig, PacketMeter};
use hawking_collector::transport::capture::{CaptureFile, slice};
use hawking_enricher::{EnrichmentStage, NatIndex, StageConfig};
use hawking_schemas::flow::{FlowOrigin, SourceKind};
use hawking_schemas::ip::ip_to_u128;
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
    let mut out = Output::open(args, &config.store.writer)?;
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
    if let Some(point) = args.meter {
        let config = MeterConfig {
            idle_timeout_us: secs_to_us(args.idle_timeout, "--idle-timeout")?,
            active_timeout_us: secs_to_us(args.active_timeout, "--active-timeout")?,
        };
        let origin = FlowOrigin {
            received_at: 0,
            exporter: ip_to_u128(point),
            observation_domain: 0,
            source_kind: SourceKind::Pcap,
        };
        let mut meter = PacketMeter::new(config);
        let link = capture.link();
        while let Some(frame) = capture.next_frame()? {
            if interrupted() {
                out.abandon();
                anyhow::bail!(Interrupted);
            }
            let origin = FlowOrigin {
                received_at: frame.at_us,
                ..origin
            };
            meter.packet(
                frame.at_us,
                slice(link, frame.data),
                &origin,
                &mut batch.flows,
            );
            if batch.flows.len() >= BATCH_FLOWS {
                flows += write(&mut stage, std::mem::take(&mut batch), &mut out)?;
            }
        }
        meter.finish(&origin, &mut batch.flows);
        flows += write(&mut stage, batch, &mut out)?;
        out.finish()?;
        let m = meter.counts();
        eprintln!(
            "replay: {} frames, {} packets metered into {flows} flows ({} fragments, {} truncated and {} non-IP frames skipped)",
            capture.counts().frames,
            m.packets,
            m.fragments,
            m.truncated,
            m.not_ip
        );
        return Ok(());
    }
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

fn secs_to_us(secs: f64, flag: &str) -> anyhow::Result<i64> {
    anyhow::ensure!(
        secs.is_finite() && secs > 0.0,
        "{flag} {secs}: give a number of seconds above 0"
    );
    Ok((secs * 1e6) as i64)
}

/// How re-sent datagrams are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// The capture's own gaps, divided by this factor.
    Speed(f64),
    /// This many datagrams per second.
    Rate(f64),
}

impl Pace {
    pub fn of(speed: Option<f64>, rate: Option<f64>) -> anyhow::Result<Pace> {
        match (speed, rate) {
            (_, Some(r)) if r.is_finite() && r > 0.0 => Ok(Pace::Rate(r)),
            (_, Some(r)) => {
                anyhow::bail!("--rate {r}: give a number of datagrams per second above 0")
            }
            (Some(s), None) if s.is_finite() && s > 0.0 => Ok(Pace::Speed(s)),
            (Some(s), None) => anyhow::bail!("--speed {s}: give a factor above 0"),
            (None, None) => Ok(Pace::Speed(1.0)),
        }
    }

    /// When the datagram captured `since_first_us` after the first one, the `n`th sent, is
    /// due after the first was sent.
    fn due(self, since_first_us: i64, n: u64) -> Duration {
        let secs = match self {
            Pace::Speed(s) => since_first_us.max(0) as f64 / 1e6 / s,
            Pace::Rate(r) => n as f64 / r,
        };
        Duration::from_secs_f64(secs)
    }
}

/// Re-sends every UDP datagram of the capture at `path` to `to`, in capture order, paced by
/// `pace`. Send errors (the collector restarting) are counted, as an exporter would.
pub fn resend(path: &Path, to: std::net::SocketAddr, pace: Pace) -> anyhow::Result<()> {
    let mut capture = CaptureFile::open(path).context("--capture")?;
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = std::net::UdpSocket::bind(bind).context("binding a socket to send from")?;
    let started = Instant::now();
    let mut first: Option<i64> = None;
    let (mut sent, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    while let Some(d) = capture.next_datagram()? {
        if interrupted() {
            anyhow::bail!(Interrupted);
        }
        let first_at = *first.get_or_insert(d.at_us);
        let due = started + pace.due(d.at_us - first_at, sent + failed);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match socket.send_to(d.payload, to) {
            Ok(n) => {
                sent += 1;
                bytes += n as u64;
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "sending a datagram to {to}");
            }
        }
    }
    let c = capture.counts();
    eprintln!(
        "replay: sent {sent} datagrams ({bytes} bytes) to {to} in {:.1} s, {failed} failed; \
         {} frames, {} fragments and {} truncated frames skipped",
        started.elapsed().as_secs_f64(),
        c.frames,
        c.fragments,
        c.truncated
    );
    anyhow::ensure!(failed == 0, "{failed} datagrams could not be sent to {to}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_keeps_the_captures_gaps_scaled_or_a_fixed_rate() {
        assert_eq!(Pace::of(None, None).unwrap(), Pace::Speed(1.0));
        assert_eq!(
            Pace::Speed(2.0).due(3_000_000, 7),
            Duration::from_millis(1500)
        );
        assert_eq!(
            Pace::Rate(100.0).due(9_000_000, 50),
            Duration::from_millis(500)
        );
        assert!(Pace::of(Some(0.0), None).is_err());
        assert!(Pace::of(None, Some(-1.0)).is_err());
    }
}
