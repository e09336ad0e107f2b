//! `hawking whois IP --at TIME`: who held an address at a time, from the stored history —
//! the same decision the enricher makes for a flow endpoint at that instant
//! ([`hawking_query::whois::lookup`]), printed for people or as JSON.

use anyhow::Context;

use hawking_enricher::OPEN;
use hawking_enricher::whois::WhoisQuery;
use hawking_schemas::Attribution;
use hawking_schemas::ip::{ip_text, parse_ip};
use hawking_schemas::time::{format_time, parse_time};
use serde_json::json;

#[derive(clap::Args)]
pub struct WhoisArgs {
    /// The address.
    ip: String,
    /// The time: RFC 3339 (2026-11-20T10:05:00Z), "2026-11-20 10:05:00" (UTC) or "now".
    #[arg(long)]
    at: String,
    /// Only this cluster [default: every cluster in the history].
    #[arg(long)]
    cluster: Option<String>,
    /// Also list every interval of the address, before and after.
    #[arg(long)]
    around: bool,
    /// A port the address used then: tells a host-network pod from its node, and makes a NAT's
    /// outside address:port answer with the pod behind the translation then.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Protocol of that port: tcp, udp, sctp or a number.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol_arg)]
    protocol: u8,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Store directory, or `s3://bucket/prefix` (reached as the `AWS_*` environment
    /// variables say).
    #[arg(long, default_value = "./data")]
    data: String,
}

fn parse_protocol_arg(text: &str) -> Result<u8, String> {
    hawking_schemas::protocol::parse_protocol(text)
        .ok_or_else(|| format!("unknown protocol {text}: use tcp, udp, sctp or 0-255"))
}

pub fn run(args: WhoisArgs) -> anyhow::Result<()> {
    let addr =
        parse_ip(&args.ip).ok_or_else(|| anyhow::anyhow!("{:?} is not an IP address", args.ip))?;
    let at = parse_time(&args.at)?;
    let query = WhoisQuery {
        addr,
        at,
        cluster: args.cluster.clone(),
        port: args.port,
        protocol: args.protocol,
    };
    let store =
        hawking_query::StoreRoot::open(&args.data, &Default::default()).context("--data")?;
    store.require_store().context("--data")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let ctx = hawking_query::open_session(&store, &Default::default()).await?;
        hawking_query::whois::lookup(&ctx, query).await
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
