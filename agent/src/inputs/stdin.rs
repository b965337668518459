//! Lines from standard input, one event each, until the input ends.

use std::sync::Arc;

use tokio::io::BufReader;

use super::read_line;
use crate::event::{now_rfc3339, Event};
use crate::shipper::Shipper;

const MAX_LINE_BYTES: usize = 256 << 10;

pub async fn run(shipper: Arc<Shipper>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut line_no = 0u64;
    while let Some((line, cut)) = read_line(&mut reader, MAX_LINE_BYTES).await? {
        line_no += 1;
        shipper.read("stdin", line.len());
        if cut {
            shipper.malformed("stdin", "truncated");
        }
        let message = shipper.text("stdin", &line);
        let event = Event {
            id: shipper.event_id("stdin", line_no),
            timestamp: now_rfc3339(),
            host: shipper.host.clone(),
            source: "stdin".into(),
            container: None,
            stream: None,
            level: None,
            message,
            fields: Default::default(),
        };
        shipper.ship("stdin", &event).await?;
    }
    tracing::info!(lines = line_no, "agent: stdin ended");
    Ok(())
}
