//! `hawking whois IP --at TIME`: who held an address at a time, from the stored history —
//! the same decision the enricher makes for a flow endpoint at that instant, through a
//! stored source-NAT translation when `--port` names a NAT's outside end. [`lookup`] is that
//! decision, shared with the SQL table function `whois(...)` (`crate::whois_table`).

use std::path::Path;

use anyhow::Context;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{SessionContext, col, lit};
use hawking_enricher::attribute::{Resolved, resolve_endpoint, resolve_translated};
use hawking_enricher::history::Interval;
use hawking_enricher::nat::{ANY_CLUSTER, Translation, nat_rows};
use hawking_enricher::{HistoryKeeper, IpHistory, Mode, NatIndex, OPEN};
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

/// The answer: the address's history as stored, and the decision the enricher makes for a
/// flow endpoint at that instant. `hawking whois` prints it; the SQL table function
/// `whois(...)` returns it as a row.
pub struct WhoisAnswer {
    keeper: HistoryKeeper,
    clusters: Vec<u16>,
    pub query: WhoisQuery,
    pub resolved: Resolved,
    /// The source-NAT translations the answer went through (the address and port were a
    /// NAT's outside end then), with their remote ends.
    pub translations: Vec<(Translation, Option<(u128, u16)>)>,
}

/// Loads the address's whole history (so ranges and neighbours are right) and every gap
/// from the session's `ip_history` and `history_gaps` views, and resolves the endpoint.
pub async fn lookup(ctx: &SessionContext, query: WhoisQuery) -> anyhow::Result<WhoisAnswer> {
    let by_cluster = |df: DataFrame| match &query.cluster {
        Some(c) => df.filter(col("cluster_name").eq(lit(c.as_str()))),
        None => Ok(df),
    };
    // A port may make the address a NAT's outside end: its translations then, and the
    // history of their inside addresses too.
    let translations = if query.port != 0 {
        ctx.table("nat_history")
            .await?
            .filter(
                col("outside_ip")
                    .eq(lit(ip_text(query.addr)))
                    .and(col("outside_port").eq(lit(query.port as i32)))
                    .and(col("protocol").eq(lit(query.protocol as i16)))
                    // Another cluster's translation would resolve in the wrong history.
                    .and(match &query.cluster {
                        Some(c) => col("cluster_name")
                            .eq(lit(c.as_str()))
                            .or(col("cluster_name").is_null()),
                        None => lit(true),
                    }),
            )?
            .collect()
            .await
            .context("reading nat_history")?
    } else {
        Vec::new()
    };
    let mut addrs = vec![lit(ip_text(query.addr))];
    for b in &translations {
        addrs.extend(nat_rows(b)?.iter().map(|r| lit(ip_text(r.inside_ip))));
    }
    let intervals = by_cluster(
        ctx.table("ip_history")
            .await?
            .filter(col("ip").in_list(addrs, false))?,
    )?
    .collect()
    .await
    .context("reading ip_history")?;
    let gaps = by_cluster(ctx.table("history_gaps").await?)?
        .collect()
        .await
        .context("reading history_gaps")?;
    let mut keeper = HistoryKeeper::new(Mode::Import);
    keeper
        .load(&intervals, &gaps)
        .context("reading the stored history")?;
    let history = keeper.history();
    let clusters: Vec<u16> = match &query.cluster {
        Some(name) => history.find_cluster(name).into_iter().collect(),
        None => (0..history.clusters().len() as u16).collect(),
    };
    let mut nat = NatIndex::default();
    nat.load(&translations, |name| {
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

pub fn run(args: WhoisArgs<'_>) -> anyhow::Result<()> {
    let addr =
        parse_ip(args.ip).ok_or_else(|| anyhow::anyhow!("{:?} is not an IP address", args.ip))?;
    let at = parse_time(args.at)?;
    let query = WhoisQuery {
        addr,
        at,
        cluster: args.cluster.map(str::to_string),
        port: args.port,
        protocol: args.protocol,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let ctx = hawking_query::open_session(args.data, &Default::default()).await?;
        lookup(&ctx, query).await
    })?;
    let history = answer.history();
    let r = answer.resolved;
    let owners = &history.owners;
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
    let until = |to: i64| {
        if to == OPEN {
            json!(null)
        } else {
            json!(format_time(to))
        }
    };
    let mut out = json!({
        "ip": ip_text(addr),
        "at": format_time(at),
        "attribution": r.attribution.as_str(),
        "cluster": answer.cluster_name(),
    });
    if let Some(o) = r.owner {
        out["owner"] = describe_owner(o);
        if let Some(iv) = answer.held_interval() {
            out["held_from"] = json!(format_time(iv.from));
            out["held_until"] = until(iv.to);
        }
    }
    if !answer.translations.is_empty() {
        out["via_snat"] = answer
            .translations
            .iter()
            .map(|(t, remote)| {
                json!({
                    "inside_ip": ip_text(t.inside_ip),
                    "inside_port": t.inside_port,
                    "remote_ip": remote.map(|r| ip_text(r.0)),
                    "remote_port": remote.map(|r| r.1),
                    "valid_from": format_time(t.from),
                    "valid_until": until(t.to),
                    "nat": ip_text(t.exporter),
                })
            })
            .collect();
    }
    if r.n_candidates > 0 {
        out["candidates"] = r.candidates[..r.n_candidates as usize]
            .iter()
            .map(|o| describe_owner(*o))
            .collect();
    }
    let gaps = answer.gaps_at();
    if !gaps.is_empty() {
        out["gaps"] = gaps
            .iter()
            .map(|(c, s, e)| json!({"cluster": c, "from": format_time(*s), "until": (*e != OPEN).then(|| format_time(*e))}))
            .collect();
    }
    if args.around {
        out["intervals"] = answer
            .intervals()
            .into_iter()
            .map(|(c, iv)| {
                let mut n = describe_owner(iv.owner);
                n["cluster"] = json!(history.cluster_name(c));
                n["from"] = json!(format_time(iv.from));
                n["until"] = until(iv.to);
                n
            })
            .collect();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_text(&out, r.attribution);
    Ok(())
}

/// The NAT translations an answer went through, one line each.
fn print_translations(out: &serde_json::Value) {
    for t in out["via_snat"].as_array().into_iter().flatten() {
        let remote = match (t["remote_ip"].as_str(), t["remote_port"].as_u64()) {
            (Some(ip), Some(port)) => format!(" towards {ip}:{port}"),
            _ => String::new(),
        };
        println!(
            "  via source NAT at {}: inside {}:{}{remote}, from {} until {}",
            t["nat"].as_str().unwrap_or(""),
            t["inside_ip"].as_str().unwrap_or(""),
            t["inside_port"],
            t["valid_from"].as_str().unwrap_or(""),
            t["valid_until"].as_str().unwrap_or("still open"),
        );
    }
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
        Attribution::Pod | Attribution::Snat | Attribution::Node | Attribution::Service => {
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
            print_translations(out);
        }
        Attribution::Ambiguous => {
            println!("{ip} at {at}: ambiguous — any of these could have held it then:");
            print_translations(out);
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
