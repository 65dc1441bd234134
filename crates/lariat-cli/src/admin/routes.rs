//! The `--metrics` endpoint's routes: what each request gets, once `access.rs` has let it through.

use lariat::lifecycle;
use lariat::CloseError;

use super::answer::Answer;
use super::request::Request;
use super::State;

/// The answer to a request: health first for everyone, then the cross-site checks, the token for the
/// connection routes, and the route itself.
pub(super) fn route(state: &State, request: &Request) -> Answer {
    let method = request.method.as_str();
    let get = method == "GET" || method == "HEAD";
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    // Health for everyone, before any check.
    match segments.as_slice() {
        ["healthz"] if get => return Answer::text(200, "ok\n"),
        ["readyz"] if get => return readyz(state),
        _ => {}
    }
    if let Err(refusal) = state.access.check_not_cross_site(&request.credentials) {
        return Answer::refused(refusal);
    }
    let connection_route = matches!(
        (segments.as_slice(), method),
        (["connections"], "GET" | "HEAD")
            | (["connections", _], "DELETE")
            | (["connections", _, "close"], "POST")
    );
    if connection_route && state.server.is_some() {
        if let Err(refusal) = state.access.check_token(&request.credentials) {
            return Answer::refused(refusal);
        }
    }
    match segments.as_slice() {
        ["metrics"] if get => metrics(state),
        ["connections"] if get => connections(state),
        ["connections", id] if method == "DELETE" => close(state, id),
        ["connections", id, "close"] if method == "POST" => close(state, id),
        ["metrics"] | ["healthz"] | ["readyz"] | ["connections"] => {
            Answer::method_not_allowed("GET, HEAD")
        }
        ["connections", _] => Answer::method_not_allowed("DELETE"),
        ["connections", _, "close"] => Answer::method_not_allowed("POST"),
        _ => Answer::text(
            404,
            "not found: try /metrics, /healthz, /readyz, /connections\n",
        ),
    }
}

fn ready(state: &State) -> bool {
    state.readiness.is_ready() && !state.server.as_ref().is_some_and(|s| s.is_draining())
}

fn readyz(state: &State) -> Answer {
    if ready(state) {
        return Answer::text(200, "ready\n");
    }
    match state.readiness.state() {
        lifecycle::State::LameDuck => {
            Answer::text(503, "lame duck: shutting down, still serving\n")
        }
        _ => Answer::text(503, "draining: taking no new traffic\n"),
    }
}

fn metrics(state: &State) -> Answer {
    if let Some(server) = &state.server {
        lariat::metrics::publish(server);
    }
    metrics::gauge!("lariat_ready").set(if ready(state) { 1.0 } else { 0.0 });
    let lame_duck = state.readiness.state() == lifecycle::State::LameDuck;
    metrics::gauge!("lariat_lame_duck").set(if lame_duck { 1.0 } else { 0.0 });
    Answer {
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        ..Answer::text(200, state.prometheus.render())
    }
}

fn connections(state: &State) -> Answer {
    let Some(server) = &state.server else {
        return no_connections_here();
    };
    let list: Vec<serde_json::Value> = server
        .connections()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "peer": c.peer.to_string(),
                "age_ms": c.age.as_millis() as u64,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "handler": state.handlers.of(c.route.as_deref()),
                "route": c.route.as_deref(),
            })
        })
        .collect();
    Answer::json(200, &serde_json::Value::Array(list))
}

fn close(state: &State, id: &str) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return Answer::json(
            400,
            &serde_json::json!({ "error": format!("`{id}` is not a connection id") }),
        );
    };
    let Some(server) = &state.server else {
        return no_connections_here();
    };
    match server.close_connection(id) {
        Ok(()) => {
            tracing::info!(conn = id, "closed by the --metrics endpoint");
            Answer::json(200, &serde_json::json!({ "closed": id }))
        }
        Err(e @ CloseError::NotFound(_)) => {
            Answer::json(404, &serde_json::json!({ "error": e.to_string() }))
        }
        Err(e @ CloseError::NotOwned(_)) => {
            Answer::json(409, &serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// A `--workers` supervisor holds no connection: they live in its workers.
fn no_connections_here() -> Answer {
    Answer::json(
        404,
        &serde_json::json!({ "error": "this is a --workers supervisor: its connections live in the workers" }),
    )
}
