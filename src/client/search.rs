//! `sluice search`: asks the search API of a running appliance or indexer and prints the hits.

use anyhow::Context;
use serde_json::Value;

use crate::cli::SearchArgs;

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let mut query = vec![("q", args.query.clone()), ("limit", args.limit.to_string())];
    if let Some(since) = &args.since {
        query.push(("start", since.clone()));
    }
    if let Some(until) = &args.until {
        query.push(("end", until.clone()));
    }
    // As given, or as a URL (`http://host:port/`).
    let server = args
        .server
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let url = format!("http://{server}/api/v1/search");
    let mut response = ureq::get(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
        .call()
        .with_context(|| {
            format!(
                "search API at {} (is sluice running? see --server)",
                args.server
            )
        })?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("search API at {}: reading the answer", args.server))?;
    if status == 404 {
        anyhow::bail!(
            "no search API at {} (HTTP 404): --server must be the HTTP address of `sluice up` or `sluice indexer`",
            args.server
        );
    }
    let body: Value = serde_json::from_str(&text)
        .with_context(|| format!("search API at {}: not JSON: {text}", args.server))?;
    if !status.is_success() {
        let reason = body["error"].as_str().unwrap_or("no reason given");
        anyhow::bail!("search refused ({status}): {reason}");
    }
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let hits = body["hits"].as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // Oldest first, so the newest line ends up beside the prompt, as with `tail`.
    for hit in hits.iter().rev() {
        use std::io::Write;
        writeln!(out, "{}", line_for_people(hit))?;
    }
    let capped = body["limit"]
        .as_u64()
        .filter(|&limit| limit < args.limit as u64)
        .map(|limit| {
            format!(
                " (-n {} is more than the server gives: {limit})",
                args.limit
            )
        })
        .unwrap_or_default();
    eprintln!(
        "{} of {} hits, {:.1} ms{capped}",
        hits.len(),
        body["total"],
        body["elapsed_ms"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// `TIME [level] [host] message`, or the event's JSON when it has no message.
fn line_for_people(hit: &Value) -> String {
    let event = &hit["event"];
    let mut line = hit["timestamp"].as_str().unwrap_or("-").to_owned();
    for key in ["level", "host", "source"] {
        if let Some(value) = event[key].as_str() {
            line.push(' ');
            line.push_str(value);
        }
    }
    let message = ["message", "msg", "log"]
        .iter()
        .find_map(|key| event[*key].as_str().map(str::to_owned))
        .unwrap_or_else(|| event.to_string());
    line.push(' ');
    line.push_str(message.trim_end());
    line
}
