//! Playing the attacker: hostile pages, clients, methods and persona answers get a clear error
//! and change nothing (issue "Safe to leave running").

use serde_json::{Value as Json, json};

use crate::common::{ServerProcess, TestApp, Ws, client, request, spawn_app, spawn_app_with};

fn line(persona: &str, pattern: &str, reply: &str) -> String {
    json!({ "persona": persona, "match": pattern, "reply": reply }).to_string()
}

/// A server whose personas answer from `lines`.
async fn scripted_app(lines: &[String]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("personas.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let app = spawn_app_with(move |s| {
        s.scripted_personas = path.display().to_string();
        s.kernel_repair_rounds = 0;
    })
    .await;
    std::mem::forget(dir);
    app
}

/// Answers (status, body) of a raw request with the given headers and body.
async fn raw(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Json) {
    let mut req = app
        .client
        .request(method.parse().unwrap(), format!("{}{path}", app.base));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = req
        .send_body(body.to_string())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(16 << 20).await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    (status, json)
}

async fn object_count(app: &TestApp) -> u64 {
    let (_, h) = app.get("/api/health").await;
    h["objects"].as_u64().unwrap()
}

/// Opens a WebSocket with extra handshake headers; `Err(status)` when refused.
async fn ws_with(base: &str, headers: &[(&str, &str)]) -> Result<Ws, String> {
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    let mut req = client().ws(url);
    for (k, v) in headers {
        req = req.set_header(*k, *v);
    }
    req.connect()
        .await
        .map(|(_, framed)| Ws::from_framed(framed))
        .map_err(|e| format!("{e:?}"))
}

#[actix_web::test]
async fn pages_of_other_sites_cannot_drive_a_default_server() {
    let app = spawn_app().await;
    let before = object_count(&app).await;
    let evil = [("origin", "http://evil.example")];
    // The WebSocket handshake from another origin is refused.
    let refused = ws_with(&app.base, &evil).await.err().expect("refused");
    assert!(refused.contains("403"), "{refused}");
    // A "simple" cross-site POST (text/plain, no preflight) is refused...
    let path = "/api/objects/genesis_obj/clone";
    let (s, v) = raw(
        &app,
        "POST",
        path,
        &[evil[0], ("content-type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    // ...and so is a JSON one, and the opaque origin of sandboxed frames and files.
    let json_ct = ("content-type", "application/json");
    for origin in ["http://evil.example", "null", "http://localhost:1"] {
        let (s, v) = raw(&app, "POST", path, &[("origin", origin), json_ct], "{}").await;
        assert_eq!(s, 403, "{origin}: {v}");
    }
    // Without Origin, a state change still needs JSON.
    let (s, v) = raw(&app, "POST", path, &[("content-type", "text/plain")], "{}").await;
    assert_eq!(s, 415, "{v}");
    let (s, v) = raw(&app, "POST", path, &[], "").await;
    assert_eq!(s, 415, "{v}");
    // DNS rebinding: another host name is refused, whatever the route.
    for route in ["/", "/api/objects", "/api/health"] {
        let (s, _) = raw(&app, "GET", route, &[("host", "evil.example")], "").await;
        assert_eq!(s, 421, "{route}");
    }
    assert_eq!(object_count(&app).await, before, "nothing was created");

    // The page itself (same origin), and clients without Origin, keep working.
    let own = format!("http://{}", app.addr);
    let (s, v) = raw(
        &app,
        "POST",
        path,
        &[("origin", own.as_str()), json_ct],
        "{}",
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mut ws = ws_with(&app.base, &[("origin", own.as_str())])
        .await
        .unwrap();
    answers_its_name(&mut ws, "o1").await;
    answers_its_name(&mut app.ws().await, "o2").await;
}

/// The connection works: `genesis_obj.name` is answered.
async fn answers_its_name(ws: &mut Ws, id: &str) {
    let (reply, _) = ws
        .call(
            json!({"type": "send", "target": "genesis_obj", "selector": "name"}),
            id,
        )
        .await;
    assert_eq!(reply["value"], "genesis_obj", "{reply}");
}

#[actix_web::test]
async fn the_admin_token_guards_writes_embeddings_and_the_websocket() {
    let app = spawn_app_with(|s| s.admin_token = "s3cret-token".into()).await;
    let json_ct = ("content-type", "application/json");
    let bearer = ("authorization", "Bearer s3cret-token");
    let path = "/api/objects/genesis_obj/clone";
    let (s, _) = raw(&app, "POST", path, &[json_ct], "{}").await;
    assert_eq!(s, 403);
    let (s, _) = raw(
        &app,
        "POST",
        path,
        &[json_ct, ("authorization", "Bearer wrong")],
        "{}",
    )
    .await;
    assert_eq!(s, 403);
    // Never from the URL: query strings land in logs and history.
    let (s, _) = raw(
        &app,
        "POST",
        &format!("{path}?token=s3cret-token"),
        &[json_ct],
        "{}",
    )
    .await;
    assert_eq!(s, 403);
    let (s, v) = raw(&app, "POST", path, &[json_ct, bearer], "{}").await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = raw(
        &app,
        "POST",
        "/api/memory/embed",
        &[json_ct],
        r#"{"texts":["x"]}"#,
    )
    .await;
    assert_eq!(s, 403, "embedding needs the token");
    // Reads on loopback, the health check and the page stay open.
    for route in ["/api/objects", "/api/health", "/", "/app.js"] {
        let (s, _) = raw(&app, "GET", route, &[], "").await;
        assert_eq!(s, 200, "{route}");
    }

    // The WebSocket: the token in a header, or in a first `auth` frame.
    let mut ws = ws_with(&app.base, &[bearer]).await.unwrap();
    answers_its_name(&mut ws, "h1").await;
    let mut ws = app.ws().await;
    let (reply, _) = ws
        .call(
            json!({"type": "send", "target": "genesis_obj", "selector": "name"}),
            "n1",
        )
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        ws.closed().await,
        "an unauthenticated client is disconnected"
    );
    let mut ws = app.ws().await;
    let (reply, _) = ws
        .call(json!({"type": "auth", "token": "nope"}), "a0")
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(ws.closed().await);
    let mut ws = app.ws().await;
    ws.send_json(json!({"type": "auth", "token": "s3cret-token", "id": "a1"}))
        .await;
    assert_eq!(ws.next().await["type"], "authed");
    answers_its_name(&mut ws, "a2").await;

    // Beyond loopback without a token, the server refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::common::test_settings(dir.path());
    settings.bind = "0.0.0.0:0".into();
    let err = telos::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("admin token"), "{err:#}");
}

#[actix_web::test]
async fn malformed_selectors_and_backup_ids_are_refused_before_any_work() {
    let app = spawn_app().await;
    let long = "a".repeat(100_000);
    for selector in ["a b", "area()", "", "1x", "x.y", long.as_str()] {
        let (s, v) = app.send("genesis_obj", selector, json!([])).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    }
    let mut ws = app.ws().await;
    let (reply, frames) = ws
        .call(
            json!({"type": "send", "target": "genesis_obj", "selector": "no way"}),
            "s1",
        )
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(
        frames.iter().all(|f| f["type"] != "stage"),
        "the kernel never ran"
    );
    for id in ["..%2F..%2Fx", "..", "a%2Fb", "x%00y"] {
        let (s, v) = app
            .post(&format!("/api/backups/{id}/verify"), json!({}))
            .await;
        assert!(s == 400 || s == 404, "{id}: {s} {v}");
    }
}

#[actix_web::test]
async fn one_message_cannot_write_without_bound_and_writes_nothing_when_it_fails() {
    // A smaller write budget than the default keeps this quick on a busy machine.
    let app = spawn_app_with(|s| s.max_write_kib = 4096).await;
    let oid = app.clone_obj("genesis_obj", json!({"name": "hog"})).await;
    let before = object_count(&app).await;
    let methods = [
        // A 2 MiB slot.
        (
            "big",
            "function big(self) { self.blob = 'x'.repeat(2 << 20); return 1; }",
            "slot size",
        ),
        // Thousands of clones with 900 KiB slots: the write budget runs out.
        (
            "storm",
            "function storm(self) { const b = 'x'.repeat(900 << 10); for (let i = 0; i < 5000; i++) clone(self, {blob: b}); return 1; }",
            "write limit",
        ),
        // Thousands of empty clones: the object budget runs out.
        (
            "many",
            "function many(self) { for (let i = 0; i < 5000; i++) clone(self); return 1; }",
            "object creation limit",
        ),
        // Tens of MB, caught: the limit is sticky.
        (
            "sly",
            "function sly(self) { try { self.blob = 'y'.repeat(20 << 20); } catch (e) {} return 1; }",
            "slot size",
        ),
    ];
    for (name, source, needle) in methods {
        app.set_method(&oid, name, source).await;
        let (s, v) = app.send(&oid, name, json!([])).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some("limit_exceeded")),
            "{name}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{name}: {v}"
        );
    }
    assert_eq!(object_count(&app).await, before, "nothing was stored");
    let (_, v) = app.get(&format!("/api/objects/{oid}")).await;
    assert!(v["slots"]["blob"].is_null(), "{v}");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn a_clone_storm_keeps_the_servers_peak_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data")).unwrap();
    let pid = server.child.id();
    let sys = actix_web::rt::System::new();
    sys.block_on(async {
        let c = client();
        let b = &server.base;
        let (_, v) = request(&c, "POST", &format!("{b}/api/objects/genesis_obj/clone"), Some(json!({}))).await;
        let oid = v["oid"].as_str().unwrap().to_string();
        let source = "function storm(self) { const b = 'x'.repeat(1000 << 10); for (let i = 0; i < 100000; i++) clone(self, {blob: b, n: i}); return 1; }";
        let (s, _) = request(&c, "PUT", &format!("{b}/api/objects/{oid}/slots/storm"), Some(json!({"method": source}))).await;
        assert_eq!(s, 200);
        let baseline = peak_rss_kib(pid);
        // Several storms at once, on every script thread.
        let url = format!("{b}/api/objects/{oid}/send");
        let sends = (0..4).map(|_| {
            let (c, url) = (&c, url.clone());
            async move { request(c, "POST", &url, Some(json!({"selector": "storm"}))).await }
        });
        for (s, v) in futures_util::future::join_all(sends).await {
            assert_eq!((s, v["code"].as_str()), (422, Some("limit_exceeded")), "{v}");
        }
        let grown = peak_rss_kib(pid).saturating_sub(baseline);
        assert!(grown < 1 << 20, "peak RSS grew by {grown} KiB");
        let (_, h) = request(&c, "GET", &format!("{b}/api/health"), None).await;
        assert_eq!(h["objects"], 6, "{h}");
    });
}

#[actix_web::test]
async fn javascript_state_does_not_outlive_a_message() {
    let app = spawn_app_with(|s| s.script_threads = 2).await;
    let oid = app
        .clone_obj("genesis_obj", json!({"name": "vandal"}))
        .await;
    let attacks = [
        (
            "j",
            "function j(self) { JSON.stringify = function () { return '\"pwned\"'; }; return 1; }",
        ),
        (
            "a",
            "function a(self) { Array.prototype.evil = 1; return 1; }",
        ),
        (
            "o",
            "function o(self) { Object.prototype.polluted = 1; return 1; }",
        ),
        ("m", "function m(self) { Math.max = () => 42; return 1; }"),
        (
            "c",
            "function c(self) { c.calls = (c.calls || 0) + 1; return c.calls; }",
        ),
        ("g", "function g(self) { globalThis.leak = 1; return 1; }"),
        // A reference is one proxy per object within a message: it cannot be frozen or
        // re-parented to carry state.
        (
            "x",
            "function x(self) { Object.preventExtensions(self); return 1; }",
        ),
        (
            "s",
            "function s(self) { Object.setPrototypeOf(self, {}); return 1; }",
        ),
        // A stack hook would reach the prelude's functions and outlive the message.
        (
            "e",
            "function e(self) { Error.prepareStackTrace = () => 'x'; return 1; }",
        ),
        // Finalizers would run a message's code during a later message.
        (
            "f",
            "function f(self) { new FinalizationRegistry(() => {}).register({}, 1); return 1; }",
        ),
    ];
    for (name, source) in attacks {
        app.set_method(&oid, name, source).await;
        // Twice per script thread, so every runtime got the chance to be polluted.
        for _ in 0..4 {
            let (s, v) = app.send(&oid, name, json!([])).await;
            assert_eq!(
                (s, v["code"].as_str()),
                (422, Some("method_error")),
                "{name}: {v}"
            );
        }
    }
    // Promise jobs belong to their message: they run before it commits, never later.
    app.set_method(
        &oid,
        "p",
        "function p(self) { Promise.resolve().then(() => { self.later = 'set in a job'; }); new Promise(() => {}); return 1; }",
    )
    .await;
    let (s, v) = app.send(&oid, "p", json!([])).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app.send(&oid, "later", json!([])).await;
    assert_eq!(v["value"], "set in a job", "{v}");
    app.set_method(
        &oid,
        "check",
        "function check(self) { return [JSON.stringify([1, {a: 2}]), [].evil, ({}).polluted, Math.max(1, 2), typeof leak, Object.isExtensible(self), typeof WeakRef]; }",
    )
    .await;
    let sends = (0..8).map(|_| app.send(&oid, "check", json!([])));
    for (s, v) in futures_util::future::join_all(sends).await {
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["value"],
            json!([
                "[1,{\"a\":2}]",
                null,
                null,
                2,
                "undefined",
                true,
                "undefined"
            ]),
            "{v}"
        );
    }
}

#[actix_web::test]
async fn a_method_writes_only_its_own_receiver_whatever_runs_during_a_send() {
    let app = spawn_app().await;
    let victim = app.clone_obj("genesis_obj", json!({"balance": 10})).await;
    app.set_method(
        &victim,
        "describe",
        "function describe(self, x) { return 'ok'; }",
    )
    .await;
    let attacker = app.clone_obj("genesis_obj", json!({"name": "thief"})).await;
    // An argument's toJSON runs while the arguments are copied, as the caller: the callee's
    // slots are out of its reach.
    app.set_method(
        &attacker,
        "steal",
        "function steal(self, v) { return v.describe({ toJSON() { v.balance = 1e9; return 0; } }); }",
    )
    .await;
    let (s, v) = app
        .send(&attacker, "steal", json!([{"$ref": victim}]))
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("method_error")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot assign"),
        "{v}"
    );
    // Code around a method's function runs while it is compiled: it reaches nothing.
    let sneaky = format!(
        "function m(self) {{ return 1; }}, (() => {{ send('{victim}', 'balance_', 0); }})(), function m(self) {{ return 2; }}"
    );
    let (s, v) = app
        .put(
            &format!("/api/objects/{attacker}/slots/m"),
            json!({ "method": sneaky }),
        )
        .await;
    assert!(s >= 400, "{s} {v}");
    let (_, v) = app.send(&victim, "balance", json!([])).await;
    assert_eq!(v["value"], 10, "{v}");
}

#[actix_web::test]
async fn the_managers_policy_changes_only_through_the_admin_api() {
    let app = spawn_app().await;
    let (_, before) = app.get("/api/backups/retention").await;
    assert_eq!(before["keep_full"], 4, "{before}");
    let evil = json!([{"keep_full": 0, "keep_incremental_days": 1}]);
    let (s, v) = app.send("backup_manager", "retention_", evil.clone()).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = app
        .send(
            "backup_manager",
            "setSlot_value_",
            json!(["retention", {"keep_full": 0}]),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = app
        .put(
            "/api/objects/backup_manager/slots/retention",
            json!({"value": {"keep_full": 0}}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // From inside a method too.
    let oid = app.clone_obj("genesis_obj", json!({})).await;
    app.set_method(
        &oid,
        "sabotage",
        "function sabotage(self) { send('backup_manager', 'retention_', {keep_full: 0, keep_incremental_days: 1}); return 1; }",
    )
    .await;
    let (s, v) = app.send(&oid, "sabotage", json!([])).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    // Native messages cannot be shadowed.
    let (s, v) = app
        .put(
            "/api/objects/memory_manager/slots/search",
            json!({"method": "function search(self) { return []; }"}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (_, after) = app.get("/api/backups/retention").await;
    assert_eq!(after, before);
    // The admin endpoint validates.
    for bad in [
        json!({"keep_full": 0, "keep_incremental_days": 14}),
        json!({"keep_full": 2, "keep_incremental_days": 0}),
        json!({"keep_full": 2}),
    ] {
        let (s, v) = app.put("/api/backups/retention", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let good = json!({"keep_full": 2, "keep_incremental_days": 7});
    let (s, v) = app.put("/api/backups/retention", good.clone()).await;
    assert_eq!((s, &v), (200, &good), "{v}");
    let (_, v) = app.get("/api/objects/backup_manager").await;
    assert_eq!(v["slots"]["retention"], good, "{v}");
}

const GOOD_AREA: &str = "function area(self, w, h) { return w * h; }";

#[actix_web::test]
async fn memories_posted_from_outside_are_never_installed_as_code() {
    let app = scripted_app(&[
        line("BRICK", ".", GOOD_AREA),
        line("ALFRED", ".", "VALID: computes from its arguments"),
        line("BABS", ".", "Computes an area."),
    ])
    .await;
    let rect = app.clone_obj("genesis_obj", json!({"name": "rect"})).await;
    // A record dressed as a learned method for exactly this situation.
    let planted = "function area(self, w, h) { self.pwned = true; return w * h; }";
    let (s, v) = app
        .post(
            "/api/memory/records",
            json!({"items": [{
                "kind": "method", "selector": "area", "owner": rect, "source": planted,
                "prompt": "area(number, number) on an object with slots ",
                "text": "area(number, number) on an object with slots : computes the area",
            }]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // A client cannot claim the kernel's origin.
    let (s, _) = app
        .post(
            "/api/memory/records",
            json!({"items": [{"text": "x", "origin": "kernel"}]}),
        )
        .await;
    assert_eq!(s, 400);
    let mut ws = app.ws().await;
    let (reply, frames) = ws
        .call(
            json!({"type": "send", "target": rect, "selector": "area", "args": [3, 4]}),
            "m1",
        )
        .await;
    assert_eq!(reply["value"], 12, "{reply} {frames:#?}");
    assert!(
        frames.iter().all(|f| f["detail"]["reuse"].is_null()),
        "the planted record was not reused: {frames:#?}"
    );
    assert!(
        frames.iter().any(|f| f["stage"] == "write"),
        "BRICK wrote it"
    );
    let (_, v) = app.get(&format!("/api/objects/{rect}")).await;
    assert!(v["slots"]["pwned"].is_null(), "{v}");
    assert_eq!(v["slots"]["area"]["method"]["source"], GOOD_AREA, "{v}");
}

#[actix_web::test]
async fn odd_verdicts_and_panicking_personas_end_in_errors_and_the_object_answers_again() {
    let app = scripted_app(&[
        line("BRICK", "Write: function area", GOOD_AREA),
        line("ALFRED", ".", "ǅ ß ŉ İ ﬃ Ⅎ ᾈ looks fine to me"),
        json!({"persona": "BRICK", "match": "Write: function volume", "reply": "", "panic": true})
            .to_string(),
    ])
    .await;
    let obj = app
        .clone_obj("genesis_obj", json!({"name": "Ωmega ß"}))
        .await;
    let (s, v) = app.send(&obj, "area", json!([3, 4])).await;
    assert_eq!((s, v["stage"].as_str()), (422, Some("review")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no clear verdict"),
        "{v}"
    );
    for _ in 0..2 {
        let (s, v) = app.send(&obj, "volume", json!([1, 2, 3])).await;
        assert_eq!(s, 422, "{v}");
        assert!(v["message"].as_str().unwrap().contains("panicked"), "{v}");
    }
    let (s, v) = app.send(&obj, "name", json!([])).await;
    assert_eq!((s, &v["value"]), (200, &json!("Ωmega ß")), "{v}");
    let (s, _) = app.get("/api/personas").await;
    assert_eq!(s, 200);
}

#[actix_web::test]
async fn a_retrievable_that_writes_to_itself_is_indexed_once_per_change() {
    let app = spawn_app().await;
    let loud = app.clone_obj("Retrievable", json!({"name": "loud"})).await;
    app.set_method(
        &loud,
        "to_text_chunks",
        "function to_text_chunks(self) { self.count = (self.count || 0) + 1; return ['loud text']; }",
    )
    .await;
    let (_, v) = app.get(&format!("/api/objects/{loud}")).await;
    let version = v["version"].clone();
    // The indexer works in order: once a later object is indexed, `loud` was handled.
    let quiet = app
        .clone_obj(
            "Retrievable",
            json!({"name": "quiet", "purpose": "Says little."}),
        )
        .await;
    app.wait_for_memories(&quiet, 1).await;
    let (_, v) = app.get(&format!("/api/objects/{loud}")).await;
    assert_eq!(v["version"], version, "{v}");
    assert!(v["slots"]["count"].is_null(), "{v}");
    let (_, r) = app.get(&format!("/api/memory/records?owner={loud}")).await;
    assert!(!r.to_string().contains("loud text"), "{r}");
}

/// A small deterministic generator for fuzzing (xorshift).
struct Fuzz(u64);

impl Fuzz {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    /// A mangled version of `text`: bytes dropped, repeated, swapped for odd characters.
    fn mangle(&mut self, text: &str) -> String {
        let odd = [
            "\u{0}", "\"", "{", "}", "[", "]", "\\", "ß", "\u{202e}", "💥", "\n", ":", ",", "null",
            "1e999", "-",
        ];
        let mut out = String::new();
        for ch in text.chars() {
            match self.next() % 12 {
                0 => {}
                1 => {
                    let s: &str = self.pick::<&str>(&odd);
                    out.push_str(s)
                }
                2 => {
                    out.push(ch);
                    out.push(ch);
                }
                _ => out.push(ch),
            }
        }
        out
    }
}

#[actix_web::test]
async fn thousands_of_fuzzed_frames_and_requests_break_nothing() {
    let app = spawn_app_with(|s| s.ws_rate_per_sec = 100_000).await;
    let seeds = [
        r#"{"type":"send","id":"x","target":"genesis_obj","selector":"name","args":[]}"#,
        r#"{"type":"line","id":"x","text":"genesis_obj.name"}"#,
        r#"{"type":"subscribe","target":"genesis_obj"}"#,
        r#"{"type":"unsubscribe","target":"genesis_obj"}"#,
        r#"{"type":"auth","token":"x"}"#,
        r#"{"type":"send","id":7,"target":"genesis_obj","selector":"clone","args":[{"a":[1,2,{"b":null}]}]}"#,
    ];
    let mut fuzz = Fuzz(0x5eed_1234_abcd_9876);
    let mut ws = app.ws().await;
    let finals = ["result", "error", "subscribed", "unsubscribed", "authed"];
    for i in 0..2000 {
        let seed: &str = fuzz.pick::<&str>(&seeds);
        let text = fuzz.mangle(seed);
        ws.send_text(text.clone()).await;
        // Every frame gets exactly one final answer; stage and log frames may come before.
        loop {
            let f = ws.next().await;
            if finals.contains(&f["type"].as_str().unwrap_or("")) {
                if f["type"] == "error" {
                    assert_ne!(f["code"], "internal", "frame {i} {text:?}: {f}");
                }
                break;
            }
        }
    }
    // The connection survived.
    answers_its_name(&mut ws, "alive").await;

    let routes = [
        (
            "POST",
            "/api/objects/genesis_obj/clone",
            r#"{"slots":{"a":1}}"#,
        ),
        (
            "POST",
            "/api/objects/genesis_obj/send",
            r#"{"selector":"name","args":[]}"#,
        ),
        (
            "PUT",
            "/api/objects/genesis_obj/slots/x",
            r#"{"value":{"deep":[1,2,3]}}"#,
        ),
        (
            "PUT",
            "/api/backups/schedule",
            r#"{"full":"0 0 3 * * SUN"}"#,
        ),
        (
            "PUT",
            "/api/backups/retention",
            r#"{"keep_full":4,"keep_incremental_days":14}"#,
        ),
        (
            "POST",
            "/api/memory/records",
            r#"{"items":[{"text":"a note"}]}"#,
        ),
        ("GET", "/api/memory/records?offset=0&limit=5", ""),
        ("GET", "/api/objects?offset=0&limit=3", ""),
        (
            "PUT",
            "/api/personas/BRICK",
            r#"{"temperature":0.5,"max_tokens":10}"#,
        ),
    ];
    for i in 0..1500 {
        let (method, path, body) = *fuzz.pick(&routes);
        let path = if i % 3 == 0 {
            fuzz.mangle(path)
        } else {
            path.to_string()
        };
        let body = fuzz.mangle(body);
        if !path.starts_with('/') || path.contains(char::is_whitespace) || path.contains('\u{0}') {
            continue;
        }
        let uri: Result<awc::http::Uri, _> = format!("{}{path}", app.base).parse();
        if uri.is_err() {
            continue;
        }
        let (s, v) = raw(
            &app,
            method,
            &path,
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        assert!(s < 500, "{method} {path} {body:?}: {s} {v}");
    }
    let (s, h) = app.get("/api/health").await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")), "{h}");
}
