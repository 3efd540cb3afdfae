#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The server over real HTTP and WebSocket on loopback: ingest then query back, bad
//! batches change nothing, authorization, the event stream resumes across reconnects,
//! and the demo keeps every acknowledged order and trade across a SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token-0123456789";

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `bourse ARGS --data DIR --listen 127.0.0.1:0 --config DIR/server.toml`
    /// and waits until it prints `ready`.
    fn start(cmd: &str, data: &Path, extra: &[&str], config: &str) -> Server {
        let cfg_path = data.with_extension("toml");
        std::fs::write(&cfg_path, format!("admin_token = \"{ADMIN}\"\nwal_segment_bytes = 4194304\nargon2_memory_kib = 64\n{config}")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_bourse"))
            .arg(cmd)
            .args([
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--config",
                cfg_path.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("bourse listening on ") {
                base = Some(addr.trim().to_string());
            }
            if line == "ready" {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base: base.expect("the server printed its address") }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn ws(&self, path: &str) -> String {
        format!("{}{path}", self.base.replace("http://", "ws://"))
    }

    fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn tick(ins: &str, t: i64, price: f64) -> String {
    json!({ "type": "tick", "instrument_id": ins, "datetime": t, "last_price": price, "volume": t })
        .to_string()
}

async fn applied(c: &reqwest::Client, s: &Server) -> u64 {
    send(c.get(s.url("/healthz"))).await.1["applied_lsn"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_query_and_bad_batches_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        "serve",
        &dir.path().join("d"),
        &[],
        "batch_events_max = 10\nbody_bytes_max = 65536\n",
    );
    let c = client();
    let ins = "SHFE.cu2512";
    let trade = json!({ "type": "trade_executed", "seqno": 1, "user_id": "acct-1", "trade_id": "o1|1", "order_id": "o1",
        "instrument_id": ins, "direction": "BUY", "offset": "OPEN", "volume": 2, "price": 78010.0, "trade_date_time": 150 });
    let body = [
        tick(ins, 100, 78000.0),
        tick(ins, 200, 78010.0),
        trade.to_string(),
        tick(ins, 300, 78020.0),
    ]
    .join("\n");
    let (code, r) = send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body(body)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["first_lsn"].as_u64(), r["last_lsn"].as_u64(), r["events"].as_u64()),
        (Some(1), Some(4), Some(4))
    );

    let (code, ticks) = send(
        c.get(s.url(&format!("/api/v1/ticks?instrument={ins}&from=0&to=1000"))).bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(code, 200);
    let got: Vec<(i64, f64)> = ticks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["datetime"].as_i64().unwrap(), t["last_price"].as_f64().unwrap()))
        .collect();
    assert_eq!(got, [(100, 78000.0), (200, 78010.0), (300, 78020.0)]);
    let (_, page) = send(
        c.get(s.url(&format!("/api/v1/ticks?instrument={ins}&from=0&limit=2"))).bearer_auth(ADMIN),
    )
    .await;
    assert_eq!((page["items"].as_array().unwrap().len(), page["more"].as_bool()), (2, Some(true)));
    let (_, trades) =
        send(c.get(s.url(&format!("/api/v1/trades?instrument={ins}&from=0"))).bearer_auth(ADMIN))
            .await;
    assert_eq!(trades["items"][0]["trade_id"], "o1|1");
    assert_eq!(trades["items"][0]["price"], 78010.0);
    let (_, latest) =
        send(c.get(s.url(&format!("/api/v1/ticks?instrument={ins}"))).bearer_auth(ADMIN)).await;
    assert_eq!(latest["latest"]["datetime"], 300);

    // Malformed batches: a clear 4xx naming the line, and nothing written.
    let before = applied(&c, &s).await;
    let bad_field = [
        tick(ins, 400, 1.0),
        json!({ "type": "tick", "instrument_id": "not an id", "datetime": 1 }).to_string(),
    ]
    .join("\n");
    let (code, r) = send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body(bad_field)).await;
    assert_eq!(code, 400);
    assert!(r["error"].as_str().unwrap().contains("line 2"), "{r}");
    let (code, r) =
        send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body("{\"type\":\"nope\"}")).await;
    assert_eq!(code, 400);
    assert!(
        r["error"].as_str().unwrap().contains("line 1")
            && r["error"].as_str().unwrap().contains("nope"),
        "{r}"
    );
    let (code, _) =
        send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body("{not json")).await;
    assert_eq!(code, 400);
    let eleven: Vec<String> = (0..11).map(|i| tick(ins, 500 + i, 1.0)).collect();
    let (code, _) =
        send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body(eleven.join("\n"))).await;
    assert_eq!(code, 413, "more events than batch_events_max");
    let (code, _) =
        send(c.post(s.url("/api/v1/events")).bearer_auth(ADMIN).body("x".repeat(100_000))).await;
    assert_eq!(code, 413, "a body over body_bytes_max");
    let (code, _) = send(
        c.post(s.url("/api/v1/events?durability=eventually"))
            .bearer_auth(ADMIN)
            .body(tick(ins, 1, 1.0)),
    )
    .await;
    assert_eq!(code, 400);
    // Unauthorized callers.
    let (code, _) = send(c.post(s.url("/api/v1/events")).body(tick(ins, 1, 1.0))).await;
    assert_eq!(code, 401);
    let (code, _) = send(
        c.post(s.url("/api/v1/events"))
            .bearer_auth("wrong-token-wrong-token")
            .body(tick(ins, 1, 1.0)),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = send(c.get(s.url(&format!("/api/v1/ticks?instrument={ins}")))).await;
    assert_eq!(code, 401);
    assert_eq!(applied(&c, &s).await, before, "rejected requests wrote nothing");
    let (_, ticks) =
        send(c.get(s.url(&format!("/api/v1/ticks?instrument={ins}&from=0"))).bearer_auth(ADMIN))
            .await;
    assert_eq!(ticks["items"].as_array().unwrap().len(), 3);

    // Metrics count what happened.
    let metrics = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("bourse_http_ingested_events_total 4"), "{metrics}");
    assert!(metrics.contains("bourse_engine_open_book_deltas 0"), "{metrics}");
    assert!(
        metrics.contains("bourse_http_requests_total{route=\"/api/v1/events\",status=\"400\"} 4"),
        "{metrics}"
    );
    // A `Buffered` batch becomes durable without a `Durable` one, by the WAL sync timer
    // (`wal_sync_ms`, 100 ms by default).
    let (code, r) = send(
        c.post(s.url("/api/v1/events?durability=buffered"))
            .bearer_auth(ADMIN)
            .body(tick(ins, 600, 1.0)),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    let last = r["last_lsn"].as_u64().unwrap();
    let mut durable = 0;
    for _ in 0..200 {
        durable = send(c.get(s.url("/healthz"))).await.1["durable_lsn"].as_u64().unwrap();
        if durable >= last {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(durable >= last, "durable_lsn {durable} stayed below the buffered batch's {last}");
    assert!(s.sigterm().success(), "SIGTERM stops the server cleanly");
    let verify = Command::new(env!("CARGO_BIN_EXE_bourse"))
        .args(["verify", "--data", dir.path().join("d").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

async fn login(c: &reqwest::Client, s: &Server, user: &str, password: &str) -> (u16, Value) {
    send(c.post(s.url("/api/v1/login")).json(&json!({ "user_id": user, "password": password })))
        .await
}

async fn place(c: &reqwest::Client, s: &Server, token: &str, body: Value) -> (u16, Value) {
    send(c.post(s.url("/api/v1/orders")).bearer_auth(token).json(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_confined_to_their_own_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("demo", &dir.path().join("d"), &["--quiet"], "");
    let c = client();
    let (code, _) = login(&c, &s, "demo1", "wrong password").await;
    assert_eq!(code, 401);
    let (code, r1) = login(&c, &s, "demo1", "bourse-demo-1").await;
    assert_eq!(code, 200, "{r1}");
    assert_eq!(r1["accounts"], json!(["demo1"]));
    let t1 = r1["token"].as_str().unwrap().to_string();
    let t2 = login(&c, &s, "demo2", "bourse-demo-2").await.1["token"].as_str().unwrap().to_string();
    let rest = |account: &str, id: &str| json!({ "account": account, "order_id": id, "instrument_id": "DCE.m2601", "direction": "BUY", "offset": "OPEN", "volume": 1, "limit_price": 2800.0 });

    let (code, r) = place(&c, &s, &t2, rest("demo2", "x1")).await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["order"]["order"]["status"], "ALIVE");
    // demo1 cannot place, see or cancel on demo2's account.
    let (code, _) = place(&c, &s, &t1, rest("demo2", "x2")).await;
    assert_eq!(code, 403);
    let (code, _) = send(c.delete(s.url("/api/v1/orders/x1?account=demo2")).bearer_auth(&t1)).await;
    assert_eq!(code, 403);
    let (code, _) = send(c.get(s.url("/api/v1/orders?account=demo2")).bearer_auth(&t1)).await;
    assert_eq!(code, 403);
    let (code, _) = send(c.get(s.url("/api/v1/accounts?account=demo2")).bearer_auth(&t1)).await;
    assert_eq!(code, 403);
    let (code, _) = send(c.get(s.url("/api/v1/users")).bearer_auth(&t1)).await;
    assert_eq!(code, 403);
    let (code, _) =
        send(c.post(s.url("/api/v1/events")).bearer_auth(&t1).body(tick("DCE.m2601", 1, 1.0)))
            .await;
    assert_eq!(code, 403);
    // The admin lists users without their password hashes.
    let users = c
        .get(s.url("/api/v1/users"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        users.contains("demo1") && !users.contains("argon2") && !users.contains("password"),
        "{users}"
    );
    // The exchange's rules answer with their reason; a used order id is a conflict.
    let (code, r) = place(&c, &s, &t1, json!({ "instrument_id": "DCE.m2601", "direction": "BUY", "volume": 1, "limit_price": 2800.5 })).await;
    assert_eq!(code, 422, "{r}");
    assert!(r["order"]["order"]["last_msg"].as_str().unwrap().contains("tick"), "{r}");
    let (code, _) = place(&c, &s, &t2, rest("demo2", "x1")).await;
    assert_eq!(code, 409);
    // A body that does not parse is a 400 naming the field, as JSON.
    let (code, r) =
        place(&c, &s, &t1, json!({ "instrument_id": "DCE.m2601", "direction": "UP", "volume": 1 }))
            .await;
    assert_eq!(code, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("direction"), "{r}");
    // demo2 cancels its own order; a second cancel is a conflict.
    let (code, r) = send(c.delete(s.url("/api/v1/orders/x1")).bearer_auth(&t2)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["order"]["order"]["status"], "FINISHED");
    assert_eq!(r["order"]["order"]["frozen_margin"], 0.0, "a finished order freezes nothing");
    let (code, _) = send(c.delete(s.url("/api/v1/orders/x1")).bearer_auth(&t2)).await;
    assert_eq!(code, 409);
    let (_, acc) = send(c.get(s.url("/api/v1/accounts")).bearer_auth(&t2)).await;
    assert_eq!(
        acc["items"][0]["frozen_margin"], 0.0,
        "the cancel released the frozen margin: {acc}"
    );
    assert_eq!(acc["items"][0]["balance"], 1_000_000.0);
    // A user's event stream carries only the user's own accounts.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(s.ws(&format!("/ws/events?from_lsn=1&token={t1}")))
            .await
            .unwrap();
    let mut accounts = std::collections::BTreeSet::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v.get("heartbeat").is_some() {
            break;
        }
        let e = &v["event"];
        let account =
            e.get("user_id").or_else(|| e.get("account_id")).and_then(Value::as_str).unwrap_or("-");
        accounts.insert(account.to_string());
    }
    assert_eq!(accounts, ["demo1".to_string()].into(), "demo1 saw events of {accounts:?}");
    // The admin ends the day: live orders expire and the limits move.
    let (code, r) = place(&c, &s, &t2, rest("demo2", "x3")).await;
    assert_eq!(code, 201, "{r}");
    let (code, _) = send(c.post(s.url("/api/v1/settle")).bearer_auth(&t2).body("{}")).await;
    assert_eq!(code, 403);
    let (code, _) = send(
        c.post(s.url("/api/v1/settle")).bearer_auth(ADMIN).body(r#"{"prices":{"DCE.zz":1.0}}"#),
    )
    .await;
    assert_eq!(code, 400);
    let (code, r) = send(
        c.post(s.url("/api/v1/settle"))
            .bearer_auth(ADMIN)
            .body(r#"{"prices":{"DCE.m2601":2950.0}}"#),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    let (_, o) = send(c.get(s.url("/api/v1/orders/x3")).bearer_auth(&t2)).await;
    assert_eq!(o["order"]["status"], "FINISHED", "{o}");
    let (_, i) = send(c.get(s.url("/api/v1/instruments"))).await;
    let m = i["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["instrument_id"] == "DCE.m2601")
        .unwrap()
        .clone();
    assert_eq!(m["pre_settlement"], 2950.0, "{m}");
}

/// Reads event frames until `until` (inclusive) or `count` events; returns their LSNs.
async fn read_events(url: &str, until: u64, count: usize) -> Vec<u64> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut lsns = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lsns.len() < count && lsns.last() != Some(&until) {
        assert!(Instant::now() < deadline, "stream stalled after {lsns:?}");
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        assert!(v.get("error").is_none() && v.get("lagged").is_none(), "{v}");
        if let Some(l) = v["lsn"].as_u64() {
            assert!(v["event"]["type"].is_string());
            lsns.push(l);
        }
    }
    let _ = ws.close(None).await;
    lsns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_across_reconnects_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("serve", &dir.path().join("d"), &[], "heartbeat_ms = 200\n");
    let c = client();
    let ingest = |from: i64| {
        let c = c.clone();
        let url = s.url("/api/v1/events");
        async move {
            for b in 0..10 {
                let lines: Vec<String> =
                    (0..20).map(|i| tick("DCE.m2601", from + b * 20 + i, 2900.0)).collect();
                let (code, _) = send(
                    c.post(&url)
                        .bearer_auth(ADMIN)
                        .body(lines.join("\n"))
                        .query(&[("durability", "buffered")]),
                )
                .await;
                assert_eq!(code, 200);
            }
        }
    };
    ingest(0).await;
    let mut seen = Vec::new();
    // Three connections, each resuming after the last LSN the previous one saw, while
    // more events are written.
    let first =
        read_events(&s.ws(&format!("/ws/events?from_lsn=1&token={ADMIN}")), u64::MAX, 70).await;
    seen.extend(first);
    let writer = tokio::spawn(ingest(10_000));
    let next = seen.last().unwrap() + 1;
    let second =
        read_events(&s.ws(&format!("/ws/events?from_lsn={next}&token={ADMIN}")), u64::MAX, 120)
            .await;
    seen.extend(second);
    writer.await.unwrap();
    let last = applied(&c, &s).await;
    assert_eq!(last, 400);
    let next = seen.last().unwrap() + 1;
    seen.extend(
        read_events(
            &s.ws(&format!("/ws/events?from_lsn={next}&topics=market&token={ADMIN}")),
            last,
            usize::MAX,
        )
        .await,
    );
    assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "every LSN exactly once, in order");
    // Bad requests are refused before the upgrade.
    assert!(
        tokio_tungstenite::connect_async(s.ws("/ws/events?from_lsn=1")).await.is_err(),
        "no token"
    );
    assert!(tokio_tungstenite::connect_async(
        s.ws(&format!("/ws/events?topics=bogus&token={ADMIN}"))
    )
    .await
    .is_err());
    assert!(tokio_tungstenite::connect_async(
        s.ws(&format!("/ws/events?from_lsn=999999&token={ADMIN}"))
    )
    .await
    .is_err());
}

/// The trade ids of the caller's account.
async fn trade_ids(c: &reqwest::Client, s: &Server, token: &str) -> Vec<String> {
    let (_, trades) = send(c.get(s.url("/api/v1/trades?limit=10000")).bearer_auth(token)).await;
    trades["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trade_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_every_acknowledged_order_and_trade_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let s = Server::start("demo", &data, &["--rate", "200"], "");
    let c = client();
    let token =
        login(&c, &s, "demo1", "bourse-demo-1").await.1["token"].as_str().unwrap().to_string();
    // Wait for the traders to make a market.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ask = loop {
        let (_, t) =
            send(c.get(s.url("/api/v1/ticks?instrument=DCE.m2601")).bearer_auth(&token)).await;
        if let Some(a) = t["latest"]["ask_price1"].as_f64().filter(|a| *a > 0.0) {
            break a;
        }
        assert!(Instant::now() < deadline, "no market after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut acked = Vec::new();
    for i in 0..12 {
        // Even orders cross the spread (and trade); odd ones rest far away.
        let price = if i % 2 == 0 { ask + 10.0 } else { ask - 100.0 };
        let (code, r) = place(&c, &s, &token, json!({ "order_id": format!("e{i}"), "instrument_id": "DCE.m2601", "direction": "BUY", "volume": 1, "limit_price": price })).await;
        assert_eq!(code, 201, "{r}");
        if i % 4 == 1 {
            let (code, r) =
                send(c.delete(s.url(&format!("/api/v1/orders/e{i}"))).bearer_auth(&token)).await;
            assert!(code == 200 || code == 409, "{r}");
        }
        let (_, r) = send(c.get(s.url(&format!("/api/v1/orders/e{i}"))).bearer_auth(&token)).await;
        acked.push(r["order"].clone());
    }
    let trades_before = trade_ids(&c, &s, &token).await;
    assert!(!trades_before.is_empty(), "the crossing orders traded");
    s.sigkill();

    let s = Server::start("demo", &data, &["--quiet"], "");
    let token =
        login(&c, &s, "demo1", "bourse-demo-1").await.1["token"].as_str().unwrap().to_string();
    for before in &acked {
        let id = before["order_id"].as_str().unwrap();
        let (code, r) =
            send(c.get(s.url(&format!("/api/v1/orders/{id}"))).bearer_auth(&token)).await;
        assert_eq!(code, 200, "acknowledged order {id} is gone after SIGKILL");
        let after = &r["order"];
        if before["status"] == "FINISHED" {
            assert_eq!(after["status"], "FINISHED", "{id}");
            assert_eq!(after["volume_left"], before["volume_left"], "{id}");
        }
        assert!(
            after["volume_left"].as_i64() <= before["volume_left"].as_i64(),
            "{id}: {before} → {after}"
        );
    }
    let after = trade_ids(&c, &s, &token).await;
    for t in &trades_before {
        assert!(after.contains(t), "acknowledged trade {t} is gone after SIGKILL");
    }
    let (_, h) = send(c.get(s.url("/healthz"))).await;
    assert_eq!(h["status"], "ok");
    // The restarted exchange still trades for demo1.
    let (code, r) = place(&c, &s, &token, json!({ "order_id": "after", "instrument_id": "DCE.m2601", "direction": "SELL", "offset": "CLOSE", "volume": 1, "limit_price": ask - 200.0 })).await;
    assert!(code == 201 || code == 422, "{code} {r}");
    assert!(s.sigterm().success());
}
