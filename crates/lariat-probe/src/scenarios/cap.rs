//! Connections beyond what the server takes at once: open many (each sends its request at connect), then
//! every one must be answered or cleanly closed within a bound, never left hanging. Each connection is
//! closed right after its answer, so a server at its cap that keeps the extras waiting in the kernel
//! backlog serves them as the earlier ones leave.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use super::open::open;
use crate::{Context, Outcome};

/// Every connection must be answered or closed this long after the last one was opened.
const BOUND: Duration = Duration::from_secs(10);

/// How one connection ended.
enum Fate {
    Served,
    Closed,
    Wrong(String),
    Hung,
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let mut server = ctx.server().await?;
    let protocol = ctx.protocol;
    let wanted = ctx.scale(3000, 1000);
    let open_deadline = Instant::now() + ctx.time(Duration::from_secs(20), Duration::from_secs(8));
    let opened = open(server.addr, wanted, open_deadline, move |tag| {
        protocol.request(tag)
    })
    .await;
    let summary = opened.summary(wanted);
    let held = opened.streams.len();
    let (refused, closed_at_once) = (opened.refused, opened.closed_at_once);

    let started = Instant::now();
    let deadline = started + BOUND;
    let checks: Vec<_> = opened
        .streams
        .into_iter()
        .map(|(tag, mut stream)| {
            tokio::spawn(async move {
                let request = protocol.request(tag);
                let fate = match tokio::time::timeout_at(
                    deadline,
                    protocol.read_answer(&mut stream, &request),
                )
                .await
                {
                    Ok(Ok(())) => Fate::Served,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                        Fate::Wrong(e.to_string())
                    }
                    Ok(Err(_)) => Fate::Closed,
                    Err(_) => Fate::Hung,
                };
                // Dropped here: closed right after the answer, making room for the ones still waiting.
                drop(stream);
                (fate, started.elapsed())
            })
        })
        .collect();
    let (mut served, mut closed, mut hung) = (0u64, refused + closed_at_once, 0u64);
    let mut wrong = Vec::new();
    let mut last_answer = None::<Duration>;
    for check in checks {
        let (fate, after) = check.await?;
        match fate {
            Fate::Served => {
                served += 1;
                last_answer = last_answer.max(Some(after));
            }
            Fate::Closed => closed += 1,
            Fate::Wrong(e) => wrong.push(e),
            Fate::Hung => hung += 1,
        }
    }
    let exited = server.exit_status();

    let outcome = outcome
        .figure("opened", summary)
        .figure("served", served)
        .figure("closed or refused", closed)
        .figure("hung", hung)
        .figure(
            "last answer",
            last_answer.map_or("n/a".into(), |d| {
                format!("{:.0} ms after the last open", d.as_secs_f64() * 1e3)
            }),
        );
    let outcome = if wrong.is_empty() {
        outcome
    } else {
        outcome.figure("wrong answers", wrong.len())
    };
    Ok(if let Some(status) = exited {
        outcome.fail(format!("the server exited: {status}"))
    } else if hung > 0 {
        outcome.fail(format!(
            "{hung} of {held} connections neither answered nor closed within {} s",
            BOUND.as_secs()
        ))
    } else if let Some(e) = wrong.first() {
        outcome.fail(format!("{} wrong answers; first: {e}", wrong.len()))
    } else if served == 0 {
        outcome.fail("no connection was served")
    } else {
        outcome.pass(format!(
            "every connection answered ({served}) or cleanly closed ({closed}) within {} s",
            BOUND.as_secs()
        ))
    })
}
