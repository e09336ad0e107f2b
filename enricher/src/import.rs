//! History from recordings: `kubectl get pods -A -o json` snapshots (a `List`), and
//! `kubectl get pods -A -w -o json --output-watch-events` streams (one `{"type", "object"}`
//! document after another), in any mix, with Nodes, Services, ReplicaSets and Jobs too.
//! Recordings carry no observation times, so boundaries come from the objects' timestamps.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use serde_json::Value;

use crate::keeper::{Event, HistoryKeeper, Mode, Observation};
use crate::objects::{
    ObservedObject, controller, node_observation, pod_observation, service_observation,
    workload_by_convention,
};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
    #[error("the history keeper must be in import mode")]
    Mode,
}

/// What an import read and produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Objects listed in snapshots or carried by events.
    pub objects: usize,
    /// Watch events.
    pub events: usize,
    /// Documents of kinds that say nothing about addresses (skipped).
    pub skipped: usize,
    /// The latest timestamp in the recording: after it, nothing is known.
    pub recording_end: Option<i64>,
    /// From when the recording tells every change: the latest timestamp of its opening list
    /// (a snapshot's objects, or the ADDED events a watch starts with).
    pub recording_start: Option<i64>,
}

enum Item {
    Object(Value),
    Event { kind: String, object: Value },
}

/// Splits a recording into objects and watch events, in order.
fn items(text: &str) -> Result<Vec<Item>, ImportError> {
    let mut out = Vec::new();
    for (index, doc) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        let doc = doc.map_err(|e| ImportError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let bad = |message: &str| ImportError::Document {
            index,
            message: message.to_string(),
        };
        match (doc.get("type").and_then(Value::as_str), doc.get("object")) {
            (Some(kind), Some(object)) => out.push(Item::Event {
                kind: kind.to_string(),
                object: object.clone(),
            }),
            _ => match doc.get("items") {
                Some(Value::Array(items)) => out.extend(items.iter().cloned().map(Item::Object)),
                Some(Value::Null) => {}
                Some(_) => return Err(bad("`items` is not an array")),
                None if doc.get("kind").is_some() => out.push(Item::Object(doc)),
                None => return Err(bad("neither a Kubernetes object, a List nor a watch event")),
            },
        }
    }
    Ok(out)
}

fn object_kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("Pod")
}

/// Workload owners the recording itself carries: ReplicaSet → Deployment, Job → CronJob.
#[derive(Default)]
struct Owners(HashMap<(String, String, String), (String, String)>);

impl Owners {
    fn learn(&mut self, v: &Value) {
        let (kind, meta) = match object_kind(v) {
            "ReplicaSet" => (
                "ReplicaSet",
                serde_json::from_value::<ReplicaSet>(v.clone())
                    .ok()
                    .map(|r| r.metadata),
            ),
            "Job" => (
                "Job",
                serde_json::from_value::<Job>(v.clone())
                    .ok()
                    .map(|j| j.metadata),
            ),
            _ => return,
        };
        let Some(meta) = meta else { return };
        if let (Some(ns), Some(name), Some(owner)) =
            (meta.namespace.clone(), meta.name.clone(), controller(&meta))
        {
            self.0.insert(
                (ns, kind.to_string(), name),
                (owner.kind.clone(), owner.name.clone()),
            );
        }
    }

    fn workload(&self, pod: &Pod) -> (String, String) {
        if let (Some(ns), Some(owner)) = (&pod.metadata.namespace, controller(&pod.metadata))
            && let Some(w) = self
                .0
                .get(&(ns.clone(), owner.kind.clone(), owner.name.clone()))
        {
            return w.clone();
        }
        workload_by_convention(pod)
    }
}

fn observe(v: &Value, owners: &Owners) -> Result<Option<ObservedObject>, String> {
    Ok(Some(match object_kind(v) {
        "Pod" => {
            let pod: Pod = serde_json::from_value(v.clone()).map_err(|e| format!("Pod: {e}"))?;
            let workload = owners.workload(&pod);
            pod_observation(&pod, workload)
        }
        "Node" => node_observation(
            &serde_json::from_value::<Node>(v.clone()).map_err(|e| format!("Node: {e}"))?,
        ),
        "Service" => service_observation(
            &serde_json::from_value::<Service>(v.clone()).map_err(|e| format!("Service: {e}"))?,
        ),
        _ => return Ok(None),
    }))
}

/// Reads a recording into `keeper` (which must be in [`Mode::Import`]) as history of
/// `cluster`; the caller ends it with [`HistoryKeeper::finish_recording`] at
/// `report.recording_end`.
pub fn import_recording(
    text: &str,
    cluster: &str,
    keeper: &mut HistoryKeeper,
) -> Result<ImportReport, ImportError> {
    if keeper.mode() != Mode::Import {
        return Err(ImportError::Mode);
    }
    let items = items(text)?;
    let mut owners = Owners::default();
    for item in &items {
        match item {
            Item::Object(v) | Item::Event { object: v, .. } => owners.learn(v),
        }
    }
    let mut report = ImportReport::default();
    let mut listing = true;
    for (index, item) in items.iter().enumerate() {
        let (event_kind, v) = match item {
            Item::Object(v) => (None, v),
            Item::Event { kind, object } => (Some(kind.as_str()), object),
        };
        if event_kind == Some("BOOKMARK") || event_kind == Some("ERROR") {
            continue;
        }
        let Some(o) =
            observe(v, &owners).map_err(|message| ImportError::Document { index, message })?
        else {
            report.skipped += 1;
            continue;
        };
        report.objects += 1;
        report.events += event_kind.is_some() as usize;
        let at = o.latest_timestamp.or(o.since).unwrap_or(0);
        report.recording_end = report.recording_end.max(Some(at));
        listing &= matches!(event_kind, None | Some("ADDED"));
        if listing {
            report.recording_start = report.recording_start.max(Some(at));
        }
        let event = match event_kind {
            Some("DELETED") => Event::Delete(o),
            Some("ADDED") | Some("MODIFIED") | None => Event::Upsert(o),
            Some(other) => {
                return Err(ImportError::Document {
                    index,
                    message: format!("unknown watch event type {other}"),
                });
            }
        };
        keeper.apply(Observation {
            cluster: cluster.to_string(),
            at,
            event,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Verdict;
    use hawking_schemas::ip::parse_ip;

    fn t(s: &str) -> i64 {
        s.parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_microsecond()
    }

    const STREAM: &str = r#"
{
    "type": "ADDED",
    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-7d4b9-a", "namespace": "shop", "uid": "a",
        "creationTimestamp": "2026-11-20T09:00:00Z", "labels": {"pod-template-hash": "7d4b9"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "rs", "controller": true}]},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
        "status": {"phase": "Running", "podIP": "10.4.1.10", "startTime": "2026-11-20T09:00:01Z"}}
}
{
    "type": "DELETED",
    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-7d4b9-a", "namespace": "shop", "uid": "a",
        "creationTimestamp": "2026-11-20T09:00:00Z", "deletionTimestamp": "2026-11-20T10:00:30Z", "deletionGracePeriodSeconds": 30},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
        "status": {"phase": "Running", "podIP": "10.4.1.10", "startTime": "2026-11-20T09:00:01Z"}}
}
{
    "type": "ADDED",
    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1", "namespace": "shop", "uid": "b",
        "creationTimestamp": "2026-11-20T10:02:00Z"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "api"}]},
        "status": {"phase": "Running", "podIP": "10.4.1.10", "startTime": "2026-11-20T10:02:00Z"}}
}
"#;

    #[test]
    fn a_watch_recording_hands_an_address_from_one_pod_to_the_next() {
        let mut k = HistoryKeeper::new(Mode::Import);
        let r = import_recording(STREAM, "prod", &mut k).unwrap();
        assert_eq!((r.objects, r.events), (3, 3));
        k.finish_recording("prod", r.recording_end.unwrap(), true);
        let h = k.history();
        let ip = parse_ip("10.4.1.10").unwrap();
        let who = |at: &str| match h.lookup(0, ip, t(at), t(at), 0, 6) {
            Verdict::Held(o) => format!(
                "{} ({})",
                h.owners.name(o),
                h.owners.text(h.owners.get(o).workload).unwrap_or("")
            ),
            v => format!("{v:?}"),
        };
        assert_eq!(who("2026-11-20T09:30:00Z"), "web-7d4b9-a (web)");
        // Deleted at 10:00:00 with 30 s of grace: deletionTimestamp 10:00:30, by when the
        // containers are gone; the address follows within the release margin.
        assert_eq!(
            who("2026-11-20T10:00:33Z"),
            "web-7d4b9-a (web)",
            "within the release margin"
        );
        assert_eq!(who("2026-11-20T10:00:40Z"), "Unknown");
        assert_eq!(
            who("2026-11-20T10:02:00Z"),
            "Unknown",
            "after the recording's last timestamp nothing is known"
        );
    }

    #[test]
    fn broken_json_is_a_clear_error() {
        let mut k = HistoryKeeper::new(Mode::Import);
        let err =
            import_recording("{\"type\": \"ADDED\", \"object\": {", "prod", &mut k).unwrap_err();
        assert!(matches!(err, ImportError::Json { line: 1, .. }), "{err}");
        let err = import_recording("[1, 2]", "prod", &mut k).unwrap_err();
        assert!(
            err.to_string().contains("neither a Kubernetes object"),
            "{err}"
        );
    }
}
