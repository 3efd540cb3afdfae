//! `GET /ws/events?from_lsn=N&topics=trades,orders&token=T`: the committed event stream
//! as JSON text frames, resumable by LSN.
//!
//! Frames: `{"lsn": n, "timestamp": ns, "event": {...}}` for events (the model's JSON
//! form, password hashes removed), `{"heartbeat": lsn}` when idle (every LSN up to
//! `lsn` has been sent or filtered out), `{"lagged": {"from": a, "to": b}}` when the
//! journal no longer holds what the client missed, and `{"error": ...}` before the
//! server closes. A client that reconnects with `from_lsn` = last LSN + 1 sees no gap
//! and no duplicate. The admin token sees every event; a user's session sees the events
//! of the user's accounts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bourse_bus::{Filter, Message, OnLag, SubscribeOptions, Topic};
use bourse_model::Event;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::http::{caller, ApiError, Caller};
use super::{App, WsSlot};

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    from_lsn: Option<u64>,
    topics: Option<String>,
    instrument: Option<String>,
    token: Option<String>,
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let who = caller(&app, &headers, q.token.as_deref())?;
    let mut filter = Filter::all();
    if let Some(topics) = &q.topics {
        for name in topics.split(',').filter(|s| !s.is_empty()) {
            let t = Topic::from_name(name).ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, format!("unknown topic {name:?}"))
            })?;
            filter = filter.topic(t);
        }
    }
    if let Some(i) = &q.instrument {
        filter = filter.instrument(i);
    }
    if let Caller::User(u) = &who {
        let accounts = app.engine.accounts_of(u)?;
        if accounts.is_empty() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("user {u:?} has no trading account"),
            ));
        }
        for a in &accounts {
            filter = filter.account(a);
        }
    }
    let mut opts = match q.from_lsn {
        Some(n) => SubscribeOptions::from_lsn(n.max(1)),
        None => SubscribeOptions::live(),
    };
    opts = opts.filter(filter).on_lag(OnLag::Replay).name("ws/events");
    let slot = app.ws_slot().ok_or_else(|| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "too many /ws/events connections".into())
    })?;
    // Subscribe before upgrading so a bad `from_lsn` is an HTTP error.
    let sub =
        app.bus.subscribe(opts).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(ws.on_upgrade(move |socket| serve(app, slot, sub, socket)).into_response())
}

async fn serve(app: Arc<App>, _slot: WsSlot, mut sub: bourse_bus::Subscriber, socket: WebSocket) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(app.cfg.ws_queue_events);
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Duration::from_millis(app.cfg.heartbeat_ms);
    let reader = {
        let stop = stop.clone();
        std::thread::Builder::new().name("bourse-ws-events".into()).spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let frame = match sub.next(heartbeat) {
                    Ok(Some(Message::Event(d))) => match d.event() {
                        Ok(e) => {
                            json!({ "lsn": d.lsn, "timestamp": d.timestamp, "event": redact(e) })
                                .to_string()
                        }
                        Err(e) => json!({ "error": e.to_string() }).to_string(),
                    },
                    Ok(Some(Message::Lagged { from, to })) => {
                        json!({ "lagged": { "from": from, "to": to } }).to_string()
                    }
                    Ok(Some(Message::Heartbeat { lsn })) => json!({ "heartbeat": lsn }).to_string(),
                    Ok(None) => {
                        json!({ "heartbeat": sub.position().saturating_sub(1) }).to_string()
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(json!({ "error": e.to_string() }).to_string());
                        return;
                    }
                };
                if tx.blocking_send(frame).is_err() {
                    return;
                }
            }
        })
    };
    let Ok(reader) = reader else { return };
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(text) => {
                    // Queue every frame already waiting, then flush once: one write
                    // for a burst instead of one per event.
                    let mut last = text.starts_with("{\"error\"");
                    let mut sent = 1;
                    if sink.feed(WsMessage::Text(Utf8Bytes::from(text))).await.is_err() { break; }
                    while !last && sent < 256 {
                        let Ok(text) = rx.try_recv() else { break };
                        last = text.starts_with("{\"error\"");
                        if sink.feed(WsMessage::Text(Utf8Bytes::from(text))).await.is_err() { break; }
                        sent += 1;
                    }
                    if sink.flush().await.is_err() { break; }
                    app.metrics.ws_sent(sent);
                    if last { break; }
                }
                None => break,
            },
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.close().await;
    stop.store(true, Ordering::Release);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
}

/// The event's JSON with any password hash removed.
fn redact(e: Event) -> serde_json::Value {
    let mut v = serde_json::to_value(&e).unwrap_or_default();
    if let Some(h) = v.get_mut("password_hash") {
        *h = json!("");
    }
    v
}
