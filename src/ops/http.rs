//! The HTTP endpoints: metrics, liveness, readiness, and a look at one
//! workflow's join state. Store reads run on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::join::{Definitions, WorkflowState};
use crate::ops::view::View;
use crate::route;
use crate::state::codec;
use crate::time::format_time;

#[derive(Clone)]
struct AppState {
    view: Arc<View>,
    config: Arc<Config>,
}

pub fn router(view: Arc<View>, config: Arc<Config>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/workflows/{id}", get(workflow))
        .with_state(AppState { view, config })
}

pub async fn serve(
    listen: SocketAddr,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(app): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.view.metrics.render()).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    let h = app.view.health();
    let reason = if let Some(f) = &h.failure {
        Some(format!("the processor failed: {f}"))
    } else if let Some((_, why)) = h.stopped.iter().next() {
        Some(if h.stopped.len() == 1 {
            why.clone()
        } else {
            format!(
                "{} partitions stopped {:?}; the first: {why}",
                h.stopped.len(),
                h.stopped.keys().collect::<Vec<_>>()
            )
        })
    } else if let Some(why) = &h.seeking {
        Some(why.clone())
    } else if let Some(why) = &h.unreachable {
        Some(format!("the Kafka cluster is unreachable: {why}"))
    } else if !h.in_group {
        Some("not a member of the consumer group yet".to_string())
    } else if !h.restoring.is_empty() {
        Some(format!("restoring partitions {:?} from the changelog", h.restoring))
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"ready": true, "assigned": h.assigned}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "reason": reason,
                "assigned": h.assigned,
                "restoring": h.restoring,
                "stopped": h.stopped,
            })),
        )
            .into_response(),
    }
}

async fn workflow(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let partitions = app.view.health().home_partitions;
    let Some(home) = (partitions > 0).then(|| route::home(&id, partitions)) else {
        let message = "junction has not reached the Kafka cluster yet: it does not know the home partitions";
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": message}))).into_response();
    };
    let Some(store) = app.view.stores().into_iter().find(|(p, _)| *p == home).map(|(_, s)| s) else {
        let message = format!(
            "workflow {id:?} is not on this instance: its home partition {home} (murmur2 of the workflow ID mod \
             {partitions}) is held by another instance, or not assigned"
        );
        return (StatusCode::NOT_FOUND, Json(json!({"error": message, "home_partition": home}))).into_response();
    };
    let lookup_id = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let bytes = store.get_state(&lookup_id).map_err(|e| e.to_string())?;
        let known = match bytes {
            Some(_) => store.definitions().map_err(|e| e.to_string())?,
            None => Definitions::default(),
        };
        Ok(bytes.map(|b| (b, known)))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match found {
        Ok(Some((bytes, known))) => match codec::decode(&bytes) {
            Ok(state) => (StatusCode::OK, Json(describe(&app.config, &known, &id, home, &state))).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
        },
        Ok(None) => {
            let message = format!(
                "workflow {id:?} is not known on its home partition {home} (never seen, or purged after its retention)"
            );
            (StatusCode::NOT_FOUND, Json(json!({"error": message, "home_partition": home}))).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e}))).into_response(),
    }
}

/// A workflow's state as `GET /workflows/{id}` shows it.
fn describe(
    config: &Config,
    known: &Definitions,
    id: &str,
    partition: i32,
    state: &WorkflowState,
) -> serde_json::Value {
    let spec =
        crate::join::governing(config.workflow(&state.workflow_type), state, known, config.state.default_deadline);
    let steps: serde_json::Map<String, serde_json::Value> = state
        .steps
        .iter()
        .filter(|s| s.work.is_some() || s.compensated_at_ms.is_some())
        .map(|s| {
            let v = json!({
                "status": s.work.map(|w| w.as_str()),
                "occurred_at": s.work.map(|_| format_time(s.occurred_at_ms)),
                "compensated_at": s.compensated_at_ms.map(format_time),
            });
            (s.name.clone(), v)
        })
        .collect();
    let missing = state.missing(&spec);
    json!({
        "workflow_id": id,
        "workflow_type": state.workflow_type,
        "home_partition": partition,
        "open": state.is_open(),
        "outcome": state.decision.map(|d| d.outcome.as_str()),
        "compensated": state.decision.is_some_and(|d| d.compensated_at_ms.is_some()),
        "started_at": format_time(state.started_at_ms),
        "deadline": state.deadline_ms(Some(&spec)).map(format_time),
        "steps": steps,
        "missing": missing,
    })
}
