//! `hawking whois IP --at TIME`: who held an address at a time, from the stored history —
//! the same decision the enricher makes for a flow endpoint at that instant.

use std::path::Path;

use anyhow::Context;
use hawking_enricher::attribute::resolve_endpoint;
use hawking_enricher::history::Interval;
use hawking_enricher::{HistoryKeeper, Mode, OPEN};
use hawking_schemas::Attribution;
use hawking_schemas::ip::{ip_text, parse_ip};
use serde_json::json;

use crate::timearg::{format_time, parse_time};

pub struct WhoisArgs<'a> {
    pub ip: &'a str,
    pub at: &'a str,
    pub cluster: Option<&'a str>,
    pub around: bool,
    pub port: u16,
    pub protocol: u8,
    pub json: bool,
    pub data: &'a Path,
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn run(args: WhoisArgs<'_>) -> anyhow::Result<()> {
    let addr =
        parse_ip(args.ip).ok_or_else(|| anyhow::anyhow!("{:?} is not an IP address", args.ip))?;
    let at = parse_time(args.at)?;
    let ip = ip_text(addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (intervals, gaps) = runtime.block_on(async {
        let ctx = hawking_query::open_session(args.data, &Default::default()).await?;
        let cluster_filter = args
            .cluster
            .map(|c| format!(" AND cluster_name = {}", sql_text(c)))
            .unwrap_or_default();
        // The whole history of the address (so ranges and neighbours are right), every gap.
        let intervals = ctx
            .sql(&format!(
                "SELECT * FROM ip_history WHERE ip = {}{cluster_filter}",
                sql_text(&ip)
            ))
            .await?
            .collect()
            .await?;
        let gaps = ctx
            .sql(&format!(
                "SELECT * FROM history_gaps WHERE true{cluster_filter}"
            ))
            .await?
            .collect()
            .await?;
        anyhow::Ok((intervals, gaps))
    })?;
    let mut keeper = HistoryKeeper::new(Mode::Import);
    keeper
        .load(&intervals, &gaps)
        .context("reading the stored history")?;
    let history = keeper.history();
    let clusters: Vec<u16> = match args.cluster {
        Some(name) => history.find_cluster(name).into_iter().collect(),
        None => (0..history.clusters().len() as u16).collect(),
    };
    let r = resolve_endpoint(history, &clusters, addr, at, at, args.port, args.protocol);
    let owners = &history.owners;
    let cluster_name = (r.cluster != u16::MAX).then(|| history.cluster_name(r.cluster).to_string());
    let held_interval = |c: u16, o| -> Option<Interval> {
        history.clusters()[c as usize]
            .intervals(addr)
            .iter()
            .rev()
            .find(|iv| iv.owner == o && iv.from <= at && iv.to >= at)
            .copied()
    };
    let describe_owner = |o| {
        let ow = owners.get(o);
        json!({
            "kind": ow.kind.as_str(),
            "namespace": owners.text(ow.namespace),
            "name": owners.name(o),
            "uid": owners.uid(o),
            "workload_kind": owners.text(ow.workload_kind),
            "workload": owners.text(ow.workload),
            "node": owners.text(ow.node),
        })
    };
    let gap_at: Vec<(String, i64, i64)> = clusters
        .iter()
        .flat_map(|c| {
            history.clusters()[*c as usize]
                .gaps()
                .iter()
                .filter(|(s, e)| *s <= at && *e >= at)
                .map(|(s, e)| (history.cluster_name(*c).to_string(), *s, *e))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = json!({
        "ip": ip,
        "at": format_time(at),
        "attribution": r.attribution.as_str(),
        "cluster": cluster_name,
    });
    if let (Some(o), Some(c)) = (r.owner, (r.cluster != u16::MAX).then_some(r.cluster)) {
        out["owner"] = describe_owner(o);
        if let Some(iv) = held_interval(c, o) {
            out["held_from"] = json!(format_time(iv.from));
            out["held_until"] = if iv.to == OPEN {
                json!(null)
            } else {
                json!(format_time(iv.to))
            };
        }
    }
    if r.n_candidates > 0 {
        out["candidates"] = r.candidates[..r.n_candidates as usize]
            .iter()
            .map(|o| describe_owner(*o))
            .collect();
    }
    if !gap_at.is_empty() {
        out["gaps"] = gap_at
            .iter()
            .map(|(c, s, e)| json!({"cluster": c, "from": format_time(*s), "until": (*e != OPEN).then(|| format_time(*e))}))
            .collect();
    }
    if args.around {
        let mut neighbours = Vec::new();
        for c in &clusters {
            for iv in history.clusters()[*c as usize].intervals(addr) {
                let mut n = describe_owner(iv.owner);
                n["cluster"] = json!(history.cluster_name(*c));
                n["from"] = json!(format_time(iv.from));
                n["until"] = if iv.to == OPEN {
                    json!(null)
                } else {
                    json!(format_time(iv.to))
                };
                neighbours.push((iv.from, n));
            }
        }
        neighbours.sort_by_key(|(from, _)| *from);
        out["intervals"] = neighbours.into_iter().map(|(_, n)| n).collect();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_text(&out, r.attribution);
    Ok(())
}

fn print_text(out: &serde_json::Value, attribution: Attribution) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let (ip, at) = (s(&out["ip"]), s(&out["at"]));
    let owner_line = |o: &serde_json::Value| {
        let ns = o["namespace"]
            .as_str()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        let workload = match (o["workload_kind"].as_str(), o["workload"].as_str()) {
            (Some(k), Some(w)) => format!(" ({k} {w})"),
            _ => String::new(),
        };
        let node = match (o["kind"].as_str(), o["node"].as_str()) {
            (Some("node"), _) | (_, None) => String::new(),
            (_, Some(n)) => format!(" on node {n}"),
        };
        format!(
            "{} {ns}{}{workload}{node}",
            s(&o["kind"]).replace('_', "-"),
            s(&o["name"])
        )
    };
    match attribution {
        Attribution::Pod | Attribution::Node | Attribution::Service => {
            let until = out["held_until"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| "still held".into());
            println!(
                "{ip} at {at} in cluster {}: {}",
                s(&out["cluster"]),
                owner_line(&out["owner"])
            );
            println!("  held from {} until {until}", s(&out["held_from"]));
        }
        Attribution::Ambiguous => {
            println!("{ip} at {at}: ambiguous — any of these could have held it then:");
            let candidates = out["candidates"].as_array().cloned().unwrap_or_default();
            for c in &candidates {
                println!("  {}", owner_line(c));
            }
            if candidates.iter().any(|c| c["kind"] == "host_network_pod") {
                println!(
                    "  (a host-network pod shares its node's address: --port with one it declares names it)"
                );
            }
        }
        Attribution::Unknown => {
            println!("{ip} at {at}: no one is known to have held it.");
            for g in out["gaps"].as_array().into_iter().flatten() {
                let until = g["until"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| "now".into());
                println!(
                    "  (cluster {} was not observed from {} until {until})",
                    s(&g["cluster"]),
                    s(&g["from"])
                );
            }
        }
        Attribution::External => {
            println!("{ip} at {at}: not a cluster address (no known cluster range or holder).")
        }
    }
    if let Some(intervals) = out["intervals"].as_array() {
        println!("  history of {ip}:");
        for n in intervals {
            let until = n["until"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| "still held".into());
            println!(
                "    {} .. {until}  [{}] {}",
                s(&n["from"]),
                s(&n["cluster"]),
                owner_line(n)
            );
        }
    }
}
