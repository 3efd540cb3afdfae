//! HTTP routes. Every handler authenticates, bounds its input, runs the engine's
//! blocking work off the async threads, and answers JSON (`{"error": ...}` on failure).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bourse_engine::{Durability, OrderFilter, OrderRecord, UserRecord};
use bourse_model::{
    CancelRequested, Direction, Event, HedgeFlag, InstrumentId, Offset, OrderRequested, PriceType,
    TimeCondition, Transfer, TransferKind, VolumeCondition,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::App;

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// An error answer: a status and a message.
#[derive(Debug)]
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<bourse_engine::Error> for ApiError {
    fn from(e: bourse_engine::Error) -> Self {
        use bourse_engine::Error as E;
        let status = match &e {
            E::Invalid(_) | E::Event { .. } => StatusCode::BAD_REQUEST,
            E::UserExists(_) | E::AccountTaken { .. } | E::NotBound { .. } => StatusCode::CONFLICT,
            E::UnknownUser(_) | E::BadCredentials => StatusCode::UNAUTHORIZED,
            E::Frozen(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// `Json<T>` whose rejections are API errors: `{"error"}` with 400 for a body that does
/// not parse or fit (naming the field), 415 without a JSON content type, 413 when too big.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = match r.status() {
                    s @ (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::PAYLOAD_TOO_LARGE) => s,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError(status, r.body_text()))
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

type ApiResult = Result<Response, ApiError>;

/// Runs blocking engine work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}")))?
}

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// Holder of the admin token.
    Admin,
    /// A logged-in user.
    User(String),
}

pub(crate) fn bearer<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token)
}

pub(crate) fn caller(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Caller, ApiError> {
    let unauthorized =
        || ApiError(StatusCode::UNAUTHORIZED, "missing or unknown bearer token".into());
    let token = bearer(headers, query_token).ok_or_else(unauthorized)?;
    if constant_time_eq(token.as_bytes(), app.admin_token.as_bytes()) {
        return Ok(Caller::Admin);
    }
    app.sessions.user(token).map(Caller::User).ok_or_else(unauthorized)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match caller(app, headers, None)? {
        Caller::Admin => Ok(()),
        Caller::User(_) => {
            Err(ApiError(StatusCode::FORBIDDEN, "this endpoint needs the admin token".into()))
        }
    }
}

/// Checks that the caller may act on trading account `account`.
fn may_use(app: &App, who: &Caller, account: &str) -> Result<(), ApiError> {
    match who {
        Caller::Admin => Ok(()),
        Caller::User(u) => {
            if app.engine.owner_of(account)?.as_deref() == Some(u.as_str()) {
                Ok(())
            } else {
                Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!("account {account:?} does not belong to {u:?}"),
                ))
            }
        }
    }
}

/// The account a request means: the one named, or the caller's only account.
fn account_of(app: &App, who: &Caller, named: Option<String>) -> Result<String, ApiError> {
    let account = match (named, who) {
        (Some(a), _) => a,
        (None, Caller::User(u)) => {
            let mut accounts = app.engine.accounts_of(u)?;
            if accounts.len() != 1 {
                return Err(bad(format!(
                    "user {u:?} has {} accounts: name one with `account`",
                    accounts.len()
                )));
            }
            accounts.remove(0)
        }
        (None, Caller::Admin) => return Err(bad("name the trading account with `account`")),
    };
    may_use(app, who, &account)?;
    Ok(account)
}

pub(crate) fn router(app: Arc<App>) -> Router {
    let limit = app.cfg.body_bytes_max;
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(super::metrics::render))
        .route("/ws/events", get(super::ws::events))
        .route("/api/v1/events", post(ingest))
        .route("/api/v1/login", post(login))
        .route("/api/v1/instruments", get(instruments))
        .route("/api/v1/orders", post(place_order).get(orders))
        .route("/api/v1/orders/{order_id}", delete(cancel_order).get(order))
        .route("/api/v1/trades", get(trades))
        .route("/api/v1/ticks", get(ticks))
        .route("/api/v1/books/{instrument}", get(book))
        .route("/api/v1/accounts", get(accounts))
        .route("/api/v1/positions", get(positions))
        .route("/api/v1/transfers", post(transfer))
        .route("/api/v1/settle", post(settle))
        .route("/api/v1/users", get(users).post(register))
        .route("/api/v1/users/{user_id}/accounts", post(bind))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Counts requests by route and status, and their latency.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    app.metrics.http(&route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let sim_error = app.sim.as_ref().and_then(|s| s.error());
    let body = json!({
        "status": if sim_error.is_none() { "ok" } else { "degraded" },
        "applied_lsn": app.engine.applied_lsn(),
        "durable_lsn": app.engine.durable_lsn(),
        "sim_processed_lsn": app.sim.as_ref().map(|s| s.processed()),
        "sim_error": sim_error,
    });
    let status =
        if body["status"] == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
struct IngestQuery {
    durability: Option<String>,
}

/// `POST /api/v1/events`: NDJSON, all or nothing.
async fn ingest(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<IngestQuery>,
    body: Bytes,
) -> ApiResult {
    admin(&app, &headers)?;
    let durability = match q.durability.as_deref() {
        None => Durability::Durable,
        Some(s) => s.parse::<Durability>().map_err(bad)?,
    };
    let text =
        std::str::from_utf8(&body).map_err(|e| bad(format!("the body is not UTF-8: {e}")))?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if events.len() == app.cfg.batch_events_max {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {} events in one batch", app.cfg.batch_events_max),
            ));
        }
        let event = Event::from_json(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        events.push(event);
    }
    if events.is_empty() {
        return Err(bad("the batch is empty"));
    }
    let n = events.len();
    let range = journal(&app, events, durability).await?;
    app.metrics.ingested(n as u64);
    Ok(Json(json!({ "first_lsn": range.first.0, "last_lsn": range.last.0, "events": n }))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user_id: String,
    password: String,
}

async fn login(State(app): State<Arc<App>>, ApiJson(b): ApiJson<LoginBody>) -> ApiResult {
    let engine = app.engine.clone();
    let user = blocking(move || Ok(engine.login(&b.user_id, &b.password)?)).await?;
    if user.frozen {
        return Err(ApiError(StatusCode::FORBIDDEN, format!("user {:?} is frozen", user.user_id)));
    }
    let accounts = app.engine.accounts_of(&user.user_id)?;
    let token = app.sessions.create(&user.user_id);
    Ok(Json(json!({ "token": token, "user_id": user.user_id, "accounts": accounts }))
        .into_response())
}

async fn instruments(State(app): State<Arc<App>>) -> ApiResult {
    let describe = |s: &bourse_sim::InstrumentSpec| {
        json!({
            "instrument_id": s.id, "name": s.name, "price_tick": s.price_tick,
            "volume_multiple": s.volume_multiple, "margin_rate": s.margin_rate,
            "commission": s.commission, "pre_settlement": s.pre_settlement,
            "upper_limit": s.price_of(s.upper_ticks()), "lower_limit": s.price_of(s.lower_ticks()),
            "max_order_volume": s.max_order_volume, "trading_time": { "day": s.day, "night": s.night },
        })
    };
    // The running exchange's rules (settlements move them), else the configured ones.
    let list: Vec<Value> = match &app.sim {
        Some(sim) => sim.with_exchange(|x| x.instruments().map(describe).collect()),
        None => app.sim_config.instruments.iter().map(describe).collect(),
    };
    Ok(Json(json!({ "items": list, "simulated": app.sim.is_some() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    account: Option<String>,
    order_id: Option<String>,
    instrument_id: InstrumentId,
    direction: Direction,
    #[serde(default)]
    offset: Offset,
    volume: i64,
    #[serde(default)]
    price_type: PriceType,
    #[serde(default)]
    limit_price: f64,
    #[serde(default)]
    time_condition: Option<TimeCondition>,
    #[serde(default)]
    volume_condition: VolumeCondition,
    #[serde(default)]
    hedge_flag: HedgeFlag,
}

fn order_json(r: &OrderRecord) -> Value {
    json!({ "created_lsn": r.created_lsn, "updated_lsn": r.updated_lsn, "order": r.order })
}

/// Waits for the exchange to answer the request at `lsn` (when one runs).
async fn answered(app: &Arc<App>, lsn: u64) -> Result<bool, ApiError> {
    let Some(sim) = app.sim.clone() else { return Ok(false) };
    let timeout = Duration::from_millis(app.cfg.answer_timeout_ms);
    let ok = blocking(move || Ok(sim.wait_processed(lsn, timeout))).await?;
    if !ok {
        return Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request is journaled at LSN {lsn}, but the exchange did not answer in time"
            ),
        ));
    }
    Ok(true)
}

/// Journals `events` at `durability` on the blocking pool; their LSN range.
async fn journal(
    app: &App,
    events: Vec<Event>,
    durability: Durability,
) -> Result<bourse_engine::LsnRange, ApiError> {
    let engine = app.engine.clone();
    blocking(move || Ok(engine.submit(&events, durability)?)).await
}

/// Journals one request durably and waits for the exchange's answer: its LSN, and
/// whether an exchange answered it (false when none runs).
async fn journal_request(app: &Arc<App>, event: Event) -> Result<(u64, bool), ApiError> {
    let lsn = journal(app, vec![event], Durability::Durable).await?.last.0;
    Ok((lsn, answered(app, lsn).await?))
}

/// `POST /api/v1/orders`: journals an order request durably and, when the exchange
/// runs, answers with its decision.
async fn place_order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PlaceOrder>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let account = account_of(&app, &who, b.account.clone())?;
    if let Caller::User(u) = &who {
        if app.engine.user(u)?.is_some_and(|r| r.frozen) {
            return Err(ApiError(StatusCode::FORBIDDEN, format!("user {u:?} is frozen")));
        }
    }
    let order_id = b.order_id.unwrap_or_else(|| format!("h{}", now_ns()));
    if app.engine.order(&account, &order_id)?.is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("order id {order_id:?} is already used by account {account:?}"),
        ));
    }
    let time_condition = b.time_condition.unwrap_or(if b.price_type == PriceType::Limit {
        TimeCondition::Gfd
    } else {
        TimeCondition::Ioc
    });
    let request = Event::OrderRequested(OrderRequested {
        user_id: account.clone(),
        order_id: order_id.clone(),
        instrument_id: b.instrument_id,
        direction: b.direction,
        offset: b.offset,
        volume: b.volume,
        price_type: b.price_type,
        limit_price: b.limit_price,
        volume_condition: b.volume_condition,
        time_condition,
        hedge_flag: b.hedge_flag,
        datetime: now_ns(),
    });
    request.validate().map_err(|e| bad(e.to_string()))?;
    let (lsn, decided) = journal_request(&app, request).await?;
    app.metrics.order();
    let rec = app.engine.order(&account, &order_id)?;
    let body = json!({ "lsn": lsn, "order": rec.as_ref().map(order_json) });
    let status = match &rec {
        Some(r)
            if decided
                && r.order.status == bourse_model::OrderStatus::Finished
                && r.order.volume_left == r.order.volume_orign
                && r.order.exchange_order_id.is_empty() =>
        {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ if decided => StatusCode::CREATED,
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    token: Option<String>,
}

/// `DELETE /api/v1/orders/{order_id}?account=A`.
async fn cancel_order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
    Query(q): Query<AccountQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let account = account_of(&app, &who, q.account)?;
    let Some(rec) = app.engine.order(&account, &order_id)? else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("account {account:?} has no order {order_id:?}"),
        ));
    };
    if rec.order.status == bourse_model::OrderStatus::Finished {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("order {order_id:?} is finished: {}", rec.order.last_msg),
        ));
    }
    let request = Event::CancelRequested(CancelRequested {
        user_id: account.clone(),
        order_id: order_id.clone(),
        datetime: now_ns(),
    });
    let (lsn, decided) = journal_request(&app, request).await?;
    let rec = app.engine.order(&account, &order_id)?;
    let status = if decided { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(json!({ "lsn": lsn, "order": rec.as_ref().map(order_json) }))).into_response())
}

async fn order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
    Query(q): Query<AccountQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let account = account_of(&app, &who, q.account)?;
    match app.engine.order(&account, &order_id)? {
        Some(r) => Ok(Json(order_json(&r)).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("account {account:?} has no order {order_id:?}"),
        )),
    }
}

fn page_limit(app: &App, limit: Option<usize>) -> Result<usize, ApiError> {
    let l = limit.unwrap_or(100);
    if l == 0 || l > app.cfg.page_rows_max {
        return Err(bad(format!("limit must be between 1 and {}", app.cfg.page_rows_max)));
    }
    Ok(l)
}

/// Takes up to `limit` rows off a streamed query: `{"items": [...], "more": bool}`.
fn page<T: serde::Serialize>(
    rows: impl Iterator<Item = bourse_engine::Result<T>>,
    limit: usize,
    map: impl Fn(T) -> Value,
) -> Result<Value, ApiError> {
    let mut items = Vec::new();
    let mut more = false;
    for r in rows {
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(map(r?));
    }
    Ok(json!({ "items": items, "more": more }))
}

async fn orders(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let account = account_of(&app, &who, q.account)?;
    let filter = match q.status.as_deref() {
        None | Some("all") => OrderFilter::All,
        Some("open") => OrderFilter::Open,
        Some(s) => return Err(bad(format!("status {s:?}: expected open or all"))),
    };
    let limit = page_limit(&app, q.limit)?;
    let engine = app.engine.clone();
    let body =
        blocking(move || page(engine.orders(&account, filter), limit, |r| order_json(&r))).await?;
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct RangeQuery {
    instrument: Option<String>,
    account: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
    at: Option<i64>,
}

fn instrument(s: Option<&str>) -> Result<InstrumentId, ApiError> {
    let s = s.ok_or_else(|| bad("name the instrument with `instrument`"))?;
    InstrumentId::new(s).map_err(bad)
}

async fn trades(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let limit = page_limit(&app, q.limit)?;
    let engine = app.engine.clone();
    let body = if q.instrument.is_some() {
        if !matches!(who, Caller::Admin) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "trades by instrument name every account: admin only; use `account`".into(),
            ));
        }
        let id = instrument(q.instrument.as_deref())?;
        let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
        blocking(move || page(engine.trades(&id, from, to), limit, |t| json!(t))).await?
    } else {
        let account = account_of(&app, &who, q.account)?;
        blocking(move || page(engine.user_trades(&account), limit, |t| json!(t))).await?
    };
    Ok(Json(body).into_response())
}

async fn ticks(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    caller(&app, &headers, None)?;
    let limit = page_limit(&app, q.limit)?;
    let id = instrument(q.instrument.as_deref())?;
    let engine = app.engine.clone();
    if q.from.is_none() && q.to.is_none() {
        // No range: the latest tick from the market cache, then history newest last.
        let latest = engine.latest_tick(&id).map(|t| (*t).clone());
        return Ok(Json(json!({ "latest": latest })).into_response());
    }
    let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
    let body = blocking(move || page(engine.ticks(&id, from, to), limit, |t| json!(t))).await?;
    Ok(Json(body).into_response())
}

async fn book(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(ins): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    caller(&app, &headers, None)?;
    let id = instrument(Some(&ins))?;
    let engine = app.engine.clone();
    let book = match q.at {
        None => engine.latest_book(&id).map(|b| (*b).clone()),
        Some(at) => blocking(move || Ok(engine.book_at(&id, at)?)).await?,
    };
    match book {
        Some(b) => Ok(Json(json!(b)).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no book for {ins}"))),
    }
}

async fn accounts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, q.token.as_deref())?;
    let account = account_of(&app, &who, q.account)?;
    Ok(Json(json!({ "items": app.engine.accounts(&account)? })).into_response())
}

async fn positions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> ApiResult {
    let who = caller(&app, &headers, None)?;
    let account = account_of(&app, &who, q.account)?;
    Ok(Json(json!({ "items": app.engine.positions(&account)? })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    account: String,
    kind: TransferKind,
    amount: f64,
}

/// `POST /api/v1/transfers` (admin): a deposit or withdrawal, answered by the exchange.
async fn transfer(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<TransferBody>,
) -> ApiResult {
    admin(&app, &headers)?;
    let event = Event::Transfer(Transfer {
        user_id: b.account.clone(),
        kind: b.kind,
        currency: "CNY".into(),
        amount: b.amount,
        datetime: now_ns(),
        error_id: 0,
        error_msg: String::new(),
    });
    event.validate().map_err(|e| bad(e.to_string()))?;
    let (lsn, _) = journal_request(&app, event).await?;
    Ok(Json(json!({ "lsn": lsn, "accounts": app.engine.accounts(&b.account)? })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    #[serde(default)]
    prices: std::collections::BTreeMap<String, f64>,
}

/// `POST /api/v1/settle` (admin): ends the trading day (see `bourse_sim::Settlement`).
async fn settle(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    admin(&app, &headers)?;
    if app.sim.is_none() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no exchange runs here (bourse serve): settlement is the trading core's".into(),
        ));
    }
    let b: SettleBody = if body.is_empty() {
        SettleBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("settlement body: {e}")))?
    };
    for (id, price) in &b.prices {
        let known = InstrumentId::new(id.as_str())
            .ok()
            .is_some_and(|i| app.sim_config.instruments.iter().any(|s| s.id == i));
        if !known {
            return Err(bad(format!("unknown instrument {id:?}")));
        }
        if !(price.is_finite() && *price > 0.0) {
            return Err(bad(format!("settlement price of {id} must be positive")));
        }
    }
    let event = bourse_sim::Settlement { datetime: now_ns(), prices: b.prices }.to_event();
    let (lsn, _) = journal_request(&app, event).await?;
    Ok(Json(json!({ "lsn": lsn })).into_response())
}

fn user_json(u: &UserRecord) -> Value {
    // The password hash never leaves the server.
    json!({ "user_id": u.user_id, "user_name": u.user_name, "phone": u.phone, "email": u.email, "frozen": u.frozen, "registered_at": u.registered_at })
}

async fn users(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    admin(&app, &headers)?;
    let limit = page_limit(&app, q.limit)?;
    let engine = app.engine.clone();
    let body = blocking(move || page(engine.users(), limit, |u| user_json(&u))).await?;
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    user_id: String,
    #[serde(default)]
    user_name: String,
    password: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    email: String,
}

async fn register(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RegisterBody>,
) -> ApiResult {
    admin(&app, &headers)?;
    let engine = app.engine.clone();
    let user = bourse_engine::NewUser {
        user_id: b.user_id.clone(),
        user_name: b.user_name,
        password: b.password,
        phone: b.phone,
        email: b.email,
    };
    let range = blocking(move || Ok(engine.register_user(&user)?)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "lsn": range.last.0, "user_id": b.user_id })))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    account: String,
}

async fn bind(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    ApiJson(b): ApiJson<BindBody>,
) -> ApiResult {
    admin(&app, &headers)?;
    let engine = app.engine.clone();
    let range = blocking(move || Ok(engine.bind_account(&user_id, &b.account)?)).await?;
    Ok(Json(json!({ "lsn": range.last.0 })).into_response())
}
