//! Spawn: the server runs with `RLIMIT_NOFILE` 100 and 1000 clients connect. Judged on behaviour first: it
//! must stay alive, not spin on `accept` (under 5% of a core while the clients are held), not flood its
//! log (more than 10 lines a second is spam), and serve a fresh client soon after the clients leave. What
//! it logged (on stderr, stdout, or its `--server-log` file) is reported; silence is information, not a
//! failure. A naive loop that ends on the first `EMFILE` dies.

use std::time::Duration;

use tokio::time::Instant;

use super::open;
use crate::protocol;
use crate::{Context, Outcome};

/// The server's open-file limit.
const NOFILE: u64 = 100;
/// Clients that connect (and then say nothing).
const CLIENTS: usize = 1000;
/// Most CPU the server may use while exhausted, as a fraction of one core.
const MAX_CPU: f64 = 0.05;
/// After the clients leave, a fresh client must be served within this.
const RECOVERY: Duration = Duration::from_secs(5);
/// More log lines per second than this while exhausted is spam: it fills disks and hides other news.
const MAX_LOG_RATE: f64 = 10.0;
/// Tags of the fresh clients, apart from the flood's.
const FRESH_TAG: u64 = 1 << 32;

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let Some(spawner) = &ctx.spawner else {
        return Ok(outcome.skip(
            "needs --spawn: it sets the server's RLIMIT_NOFILE and reads its CPU time from /proc",
        ));
    };
    let mut server = spawner.start(Some(NOFILE)).await?;
    let logged_before = server.log_mark();
    let exhausted_from = Instant::now();

    let open_deadline = Instant::now() + Duration::from_secs(8);
    let opened = open::open(server.addr, CLIENTS, open_deadline, |_| Vec::new()).await;
    let outcome = outcome
        .figure("nofile", NOFILE)
        .figure("clients connected", opened.summary(CLIENTS));

    // Hold them; watch the server's CPU over the hold.
    let hold = ctx.time(Duration::from_secs(5), Duration::from_secs(3));
    let cpu_before = server.cpu_time().ok();
    let held_from = Instant::now();
    let mut exited = None;
    while held_from.elapsed() < hold {
        if let Some(status) = server.exit_status() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after = server.cpu_time().ok();
    let held_for = held_from.elapsed();
    let exited = exited.or_else(|| server.exit_status());
    let cpu = match (exited, cpu_before, cpu_after) {
        (None, Some(before), Some(after)) => {
            Some(after.saturating_sub(before).as_secs_f64() / held_for.as_secs_f64())
        }
        _ => None,
    };
    let said = server.said_since(&logged_before);
    let lines = said.lines().filter(|l| !l.trim().is_empty()).count();
    let log_rate = lines as f64 / exhausted_from.elapsed().as_secs_f64().max(0.001);
    let first_line = telling_line(&said).map(|l| shorten(l, 160));

    let outcome = outcome
        .figure(
            "server CPU while held",
            cpu.map_or("n/a".into(), |c| format!("{:.1}% of a core", c * 100.0)),
        )
        .figure(
            "log lines while exhausted",
            format!("{lines} ({log_rate:.1}/s)"),
        )
        .figure("read from", server.said_where())
        .figure("server said", first_line.as_deref().unwrap_or("nothing"));

    // Let the clients go; a fresh client must be served soon.
    drop(opened);
    let recovery = if exited.is_none() {
        Some(recover(ctx, server.addr).await)
    } else {
        None
    };
    let exited = exited.or_else(|| server.exit_status());
    let outcome = outcome.figure(
        "served again after the clients left",
        match &recovery {
            None => "n/a".to_owned(),
            Some(Ok(took)) => format!("{:.0} ms", took.as_secs_f64() * 1e3),
            Some(Err(e)) => format!("not within {} s ({e})", RECOVERY.as_secs()),
        },
    );

    if let Some(status) = exited {
        let said = first_line.map_or(String::new(), |l| format!("; it said: {l}"));
        return Ok(outcome.fail(format!(
            "the server exited: {status}, with {NOFILE} descriptors and {CLIENTS} clients{said}"
        )));
    }
    // Behaviour decides; each piece of evidence is named in the reason, failing or not.
    let mut problems = Vec::new();
    let mut evidence = Vec::new();
    match cpu {
        Some(c) if c >= MAX_CPU => problems.push(format!(
            "it used {:.0}% of a core while out of descriptors (spinning on accept?)",
            c * 100.0
        )),
        Some(c) => evidence.push(format!("CPU {:.1}% of a core", c * 100.0)),
        None => problems.push("its CPU time could not be read".to_owned()),
    }
    if log_rate > MAX_LOG_RATE {
        problems.push(format!(
            "it logged {lines} lines ({log_rate:.0}/s, over {MAX_LOG_RATE:.0}/s): log spam"
        ));
    } else if lines == 0 {
        evidence.push(format!(
            "logged nothing in {} (information: an operator is not told)",
            server.said_where()
        ));
    } else {
        evidence.push(format!("{lines} log lines ({log_rate:.1}/s)"));
    }
    match &recovery {
        Some(Err(e)) => problems.push(format!(
            "a fresh client was not served within {} s after the clients left ({e})",
            RECOVERY.as_secs()
        )),
        Some(Ok(took)) => evidence.push(format!(
            "served again {:.0} ms after the clients left",
            took.as_secs_f64() * 1e3
        )),
        None => {}
    }
    Ok(if problems.is_empty() {
        outcome
            .figure("decided by", evidence.join(", "))
            .pass(format!(
                "alive while out of descriptors: {}",
                evidence.join(", ")
            ))
    } else {
        outcome
            .figure("decided by", problems.join("; "))
            .fail(problems.join("; "))
    })
}

/// Time from now until a fresh client gets a correct answer, retrying until [`RECOVERY`].
async fn recover(ctx: &Context, addr: std::net::SocketAddr) -> Result<Duration, String> {
    let began = Instant::now();
    let deadline = began + RECOVERY;
    let mut tag = FRESH_TAG;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        tag += 1;
        match tokio::time::timeout_at(deadline, protocol::one_connection(ctx.protocol, addr, tag))
            .await
        {
            Ok(Ok(())) => return Ok(began.elapsed()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The log line that shows what the server made of the exhaustion: the first that names it (a server's
/// own start-up notices can land after the probe's mark, on a loaded machine), else the first line.
fn telling_line(said: &str) -> Option<&str> {
    const SIGNS: [&str; 4] = ["open files", "emfile", "descriptor", "accept"];
    let mut lines = said.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next();
    lines
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            SIGNS.iter().any(|sign| lower.contains(sign))
        })
        .or(first)
}

#[cfg(test)]
mod telling_line_tests {
    use super::telling_line;

    #[test]
    fn the_line_naming_the_exhaustion_wins_over_start_up_notices() {
        let said = "\n[notice] 1#1: nginx/1.22.1\n[crit] 2#2: accept4() failed (24: Too many open files)\n";
        assert_eq!(
            telling_line(said),
            Some("[crit] 2#2: accept4() failed (24: Too many open files)")
        );
        assert_eq!(telling_line("started\n"), Some("started"));
        assert_eq!(telling_line("  \n"), None);
    }
}
