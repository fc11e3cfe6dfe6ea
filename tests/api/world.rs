//! Black-box tests of the living world: the real server, a fresh data dir, port 0.

use std::time::{Duration, Instant};

use crate::common::{
    ServerProcess, Ws, client, object_with_method, request, sample, spawn_app, spawn_app_with,
};
use serde_json::{Value as Json, json};

#[actix_web::test]
async fn a_fresh_world_lists_the_primordial_objects() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/objects").await;
    assert_eq!(status, 200);
    let oids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["oid"].as_str().unwrap())
        .collect();
    for oid in [
        "traits_obj",
        "genesis_obj",
        "memory_manager",
        "backup_manager",
        "Retrievable",
    ] {
        assert!(oids.contains(&oid), "{oid} missing from {oids:?}");
    }
    let (status, genesis) = app.get("/api/objects/genesis_obj").await;
    assert_eq!(status, 200);
    assert_eq!(genesis["parents"], json!(["traits_obj"]));
    let (status, health) = app.get("/api/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["objects"], 5);
}

#[actix_web::test]
async fn a_parent_method_runs_for_a_child_with_self_as_the_child() {
    let app = spawn_app().await;
    let proto = app
        .clone_obj("genesis_obj", json!({"w": 1, "h": 1, "kind": "proto"}))
        .await;
    app.set_method(
        &proto,
        "area",
        "function area(self) { return self.w * self.h; }",
    )
    .await;
    app.set_method(
        &proto,
        "grow",
        "function grow(self, k) { self.w = self.w * k; return self.w; }",
    )
    .await;
    let child = app.clone_obj(&proto, json!({"w": 3, "h": 4})).await;

    assert_eq!(app.send(&child, "area", json!([])).await.1["value"], 12);
    assert_eq!(
        app.send(&child, "kind", json!([])).await.1["value"],
        "proto",
        "reads fall through to the parent"
    );
    assert_eq!(app.send(&child, "grow", json!([2])).await.1["value"], 6);

    let (_, c) = app.get(&format!("/api/objects/{child}")).await;
    let (_, p) = app.get(&format!("/api/objects/{proto}")).await;
    assert_eq!(c["slots"]["w"], 6, "the write landed on the child");
    assert_eq!(p["slots"]["w"], 1, "the parent is untouched");
    assert_eq!(c["parents"], json!([proto]));
}

#[actix_web::test]
async fn reads_within_a_message_see_every_write_before_them_and_values_are_copies() {
    let app = spawn_app().await;
    let other = app.clone_obj("genesis_obj", json!({"n": 1})).await;
    app.set_method(
        &other,
        "bump",
        "function bump(self) { self.n = self.n + 1; return self.n; }",
    )
    .await;
    let o = app
        .clone_obj(
            "genesis_obj",
            json!({"n": 1, "list": [1], "other": {"$ref": other}}),
        )
        .await;
    app.set_method(
        &o,
        "bump",
        "function bump(self) { self.n = self.n + 1; return self.n; }",
    )
    .await;
    app.set_method(
        &o,
        "story",
        "function story(self) {
            const seen = [self.n];
            self.n = 5; seen.push(self.n);               // its own write
            seen.push(self.bump(), self.n);              // a callee's write to the same object
            const o = self.other;
            seen.push(o.n, o.bump(), o.n);               // another object's callee
            send(o, 'n_', 40); seen.push(o.n);           // a setter through send
            send(self, 'setSlot_value_', 'n', 9); seen.push(self.n);
            const a = self.list; a.push(2);              // a copy: the slot is unchanged
            seen.push(self.list.length, a.length);
            seen.push(typeof self.missing, 'missing' in self);
            self.missing = 0; seen.push(self.missing, 'missing' in self);
            return seen;
        }",
    )
    .await;
    let (s, v) = app.send(&o, "story", json!([])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["value"],
        json!([
            1,
            5,
            6,
            6,
            1,
            2,
            2,
            40,
            9,
            1,
            2,
            "undefined",
            false,
            0,
            true
        ]),
        "{v}"
    );
    // An error names the methods it passed through, not the bridge between them.
    app.set_method(
        &other,
        "fail",
        "function fail(self) { throw new Error('broken'); }",
    )
    .await;
    app.set_method(
        &o,
        "relay",
        "function relay(self) { return self.other.fail(); }",
    )
    .await;
    let (s, v) = app.send(&o, "relay", json!([])).await;
    assert_eq!(s, 422, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{other}.fail: broken")),
        "{message}"
    );
    assert!(message.contains(&format!("{other}.fail:1")), "{message}");
    assert!(!message.contains("eval_script"), "{message}");
    // Nothing read in one message is remembered in the next.
    assert_eq!(app.send(&o, "n_", json!([100])).await.0, 200);
    assert_eq!(app.send(&o, "bump", json!([])).await.1["value"], 101);
}

#[actix_web::test]
async fn getters_setters_and_set_slot_value_work_as_messages() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({"name": "ada"})).await;
    assert_eq!(app.send(&o, "name", json!([])).await.1["value"], "ada");
    assert_eq!(app.send(&o, "name_", json!(["grace"])).await.0, 200);
    assert_eq!(app.send(&o, "name", json!([])).await.1["value"], "grace");
    assert_eq!(
        app.send(&o, "setSlot_value_", json!(["age", 36])).await.0,
        200
    );
    assert_eq!(app.send(&o, "age", json!([])).await.1["value"], 36);
    let (status, body) = app.send(&o, "age", json!([1])).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "method_error");
}

#[actix_web::test]
async fn an_unknown_message_is_a_clear_does_not_understand_unless_the_chain_handles_it() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({})).await;
    let (status, body) = app.send(&o, "fly", json!([1])).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "does_not_understand");
    assert!(body["message"].as_str().unwrap().contains(&o));
    assert!(body["message"].as_str().unwrap().contains("fly"));

    let proto = app.clone_obj("genesis_obj", json!({})).await;
    app.set_method(
        &proto,
        "doesNotUnderstand_",
        "function doesNotUnderstand_(self, selector, args) { return selector + ':' + args.length; }",
    )
    .await;
    let child = app.clone_obj(&proto, json!({})).await;
    assert_eq!(
        app.send(&child, "fly", json!([1, 2])).await.1["value"],
        "fly:2"
    );
}

#[actix_web::test]
async fn a_send_cycle_returns_and_endless_recursion_ends_with_an_error() {
    let app = spawn_app().await;
    let a = app.clone_obj("genesis_obj", json!({"n": 0})).await;
    let b = app
        .clone_obj("genesis_obj", json!({"peer": {"$ref": a}}))
        .await;
    app.set_method(&a, "ping", &format!(
        "function ping(self, k) {{ self.n = self.n + 1; return k <= 0 ? 'done' : send('{b}', 'pong', k - 1); }}"
    )).await;
    app.set_method(
        &b,
        "pong",
        "function pong(self, k) { return self.peer.ping(k); }",
    )
    .await;
    let (status, body) = app.send(&a, "ping", json!([6])).await;
    assert_eq!((status, &body["value"]), (200, &json!("done")), "{body}");
    let (_, a_view) = app.get(&format!("/api/objects/{a}")).await;
    assert_eq!(
        a_view["slots"]["n"], 7,
        "A ran for k = 6, 5, ..., 0 and its writes committed"
    );

    app.set_method(
        &a,
        "forever",
        &format!("function forever(self) {{ return send('{b}', 'back'); }}"),
    )
    .await;
    app.set_method(
        &b,
        "back",
        &format!("function back(self) {{ return send('{a}', 'forever'); }}"),
    )
    .await;
    let (status, body) = app.send(&a, "forever", json!([])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "limit_exceeded", "{body}");

    // Even a method that catches the error cannot keep going.
    app.set_method(&a, "sneaky", &format!(
        "function sneaky(self) {{ try {{ return send('{b}', 'back2'); }} catch (e) {{ return 'caught'; }} }}"
    )).await;
    app.set_method(
        &b,
        "back2",
        &format!("function back2(self) {{ return send('{a}', 'sneaky'); }}"),
    )
    .await;
    let (status, body) = app.send(&a, "sneaky", json!([])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("limit_exceeded")),
        "{body}"
    );

    assert_eq!(
        app.send(&a, "n", json!([])).await.1["value"],
        7,
        "the server still answers"
    );
}

#[actix_web::test]
async fn runaway_methods_hit_their_limits_while_others_are_served() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({"x": 1})).await;
    app.set_method(&o, "spin", "function spin(self) { while (true) {} }")
        .await;
    app.set_method(
        &o,
        "hog",
        "function hog(self) { const a = []; while (true) a.push(new Array(1 << 20).fill(7)); }",
    )
    .await;
    app.set_method(
        &o,
        "big",
        "function big(self) { return new ArrayBuffer(1024 * 1024 * 1024).byteLength; }",
    )
    .await;
    app.set_method(
        &o,
        "deep",
        "function deep(self) { const f = (n) => f(n + 1) + 1; return f(0); }",
    )
    .await;
    app.set_method(
        &o,
        "probe",
        "function probe(self) { return [typeof require, typeof process, typeof fetch, typeof std, typeof os, typeof setTimeout, typeof XMLHttpRequest]; }",
    )
    .await;
    let other = app.clone_obj("genesis_obj", json!({"y": 2})).await;

    let base = app.base.clone();
    let spinning = {
        let o = o.clone();
        actix_web::rt::spawn(async move {
            let c = client();
            let t = Instant::now();
            let r = request(
                &c,
                "POST",
                &format!("{base}/api/objects/{o}/send"),
                Some(json!({"selector": "spin"})),
            )
            .await;
            (r, t.elapsed())
        })
    };
    // Served while the loop spins on the other script thread.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    assert_eq!(app.send(&other, "y", json!([])).await.1["value"], 2);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "another object answered while one spins"
    );
    let ((status, body), took) = spinning.await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("limit_exceeded")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("wall time"),
        "{body}"
    );
    assert!(
        took < Duration::from_secs(4),
        "stopped near the 2 s limit, took {took:?}"
    );

    for sel in ["hog", "big", "deep"] {
        let (status, body) = app.send(&o, sel, json!([])).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("limit_exceeded")),
            "{sel}: {body}"
        );
    }
    let (_, body) = app.send(&o, "probe", json!([])).await;
    assert_eq!(body["value"], json!(vec!["undefined"; 7]));
    assert_eq!(
        app.send(&o, "x", json!([])).await.1["value"],
        1,
        "the object still works"
    );
}

#[actix_web::test]
async fn a_method_that_throws_after_writing_leaves_every_slot_as_it_was() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({"a": 1, "b": 2})).await;
    let peer = app.clone_obj("genesis_obj", json!({"c": 3})).await;
    app.set_method(
        &peer,
        "bump",
        "function bump(self) { self.c = 99; return 1; }",
    )
    .await;
    app.set_method(&o, "oops", &format!(
        "function oops(self) {{ self.a = 10; self.b = 20; send('{peer}', 'bump'); clone(); throw new Error('boom'); }}"
    )).await;
    let (status, body) = app.send(&o, "oops", json!([])).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "method_error");
    assert!(body["message"].as_str().unwrap().contains("boom"), "{body}");
    let (_, v) = app.get(&format!("/api/objects/{o}")).await;
    assert_eq!(
        (v["slots"]["a"].clone(), v["slots"]["b"].clone()),
        (json!(1), json!(2))
    );
    let (_, p) = app.get(&format!("/api/objects/{peer}")).await;
    assert_eq!(p["slots"]["c"], 3, "nested writes were rolled back too");
    let (_, list) = app.get("/api/objects").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        7,
        "the clone made inside was not kept"
    );
}

#[actix_web::test]
async fn syntax_errors_name_the_object_method_line_and_column() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({})).await;
    let (status, body) = app
        .put(
            &format!("/api/objects/{o}/slots/bad"),
            json!({"method": "function bad(self) {\n  return 1 +;\n}"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{o}.bad")) && msg.contains("line 2") && msg.contains("column"),
        "{msg}"
    );
    let (status, body) = app
        .put(
            &format!("/api/objects/{o}/slots/two"),
            json!({"method": "function a(self) {} ; globalThis.x = 1"}),
        )
        .await;
    assert_eq!(status, 422, "only a single function is accepted: {body}");
}

#[actix_web::test]
async fn ws_send_line_subscribe_and_changed_frames() {
    let app = spawn_app().await;
    let o = app.clone_obj("genesis_obj", json!({"count": 0})).await;
    app.set_method(&o, "inc", "function inc(self, by) { log('adding', by); self.count = self.count + by; return self.count; }").await;
    let mut ws = app.ws().await;
    ws.send_json(json!({"type": "subscribe", "target": o}))
        .await;
    assert_eq!(ws.next().await["type"], "subscribed");

    let (res, others) = ws
        .call(
            json!({"type": "send", "target": o, "selector": "inc", "args": [5]}),
            "c1",
        )
        .await;
    assert_eq!(res, json!({"type": "result", "id": "c1", "value": 5}));
    assert!(
        others
            .iter()
            .any(|f| f["type"] == "log" && f["text"] == "adding 5"),
        "{others:?}"
    );
    let changed = if others.iter().any(|f| f["type"] == "changed") {
        others.into_iter().find(|f| f["type"] == "changed").unwrap()
    } else {
        ws.next().await
    };
    assert_eq!(changed["type"], "changed");
    assert_eq!(changed["target"], json!(o));
    assert_eq!(changed["slots"], json!(["count"]));

    let (res, _) = ws
        .call(json!({"type": "line", "text": format!("{o}.inc(2)")}), "c2")
        .await;
    assert_eq!(res["value"], 7);
    let (res, _) = ws
        .call(json!({"type": "line", "text": format!("{o}.count")}), "c3")
        .await;
    assert_eq!(res["value"], 7);
}

#[actix_web::test]
async fn bad_input_gets_clear_errors_and_the_connection_stays_usable() {
    let app = spawn_app_with(|s| s.max_frame_kib = 16).await;
    let mut ws = app.ws().await;
    ws.send_text("{not json".into()).await;
    let f = ws.next().await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{f}"
    );
    assert!(f["message"].as_str().unwrap().contains("malformed JSON"));

    let (f, _) = ws.call(json!({"type": "dance"}), "u1").await;
    assert_eq!(f["code"], "bad_request");
    assert!(
        f["message"].as_str().unwrap().contains("expected type"),
        "{f}"
    );

    let (f, _) = ws
        .call(
            json!({"type": "send", "target": "nobody", "selector": "x"}),
            "u2",
        )
        .await;
    assert_eq!(f["code"], "not_found", "{f}");

    ws.send_text(json!({"type": "send", "id": "big", "target": "genesis_obj", "selector": "x", "args": ["y".repeat(20_000)]}).to_string()).await;
    let f = ws.next().await;
    assert_eq!(f["code"], "bad_request");
    assert!(
        f["message"].as_str().unwrap().contains("over the limit"),
        "{f}"
    );

    let (f, _) = ws
        .call(json!({"type": "line", "text": "genesis_obj.name()"}), "ok")
        .await;
    assert_eq!(f["value"], "genesis_obj", "still usable: {f}");

    // REST.
    assert_eq!(app.get("/api/objects/nobody").await.0, 404);
    assert_eq!(app.get("/api/objects/nobody").await.1["code"], "not_found");
    let (status, body) = app
        .put("/api/objects/genesis_obj/slots/a%0Ab", json!({"value": 1}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let long = "n".repeat(200);
    assert_eq!(
        app.put(
            &format!("/api/objects/genesis_obj/slots/{long}"),
            json!({"value": 1})
        )
        .await
        .0,
        400
    );
    let (status, body) = app
        .put("/api/objects/genesis_obj/slots/x", json!({"valu": 1}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let resp = app
        .client
        .post(format!("{}/api/objects/genesis_obj/send", app.base))
        .insert_header(("content-type", "application/json"))
        .send_body("{oops")
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let (status, _) = app
        .send("genesis_obj", "x", json!(["z".repeat(20_000)]))
        .await;
    assert_eq!(status, 413);
    let (status, body) = app.delete("/api/objects/traits_obj").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = app.delete("/api/objects/genesis_obj").await;
    assert_eq!(status, 403, "{body}");
}

#[actix_web::test]
async fn objects_are_passivated_when_idle_and_come_back_on_the_next_message() {
    let app = spawn_app_with(|s| s.passivate_after_secs = 0.2).await;
    let o = app.clone_obj("genesis_obj", json!({"v": 41})).await;
    app.set_method(
        &o,
        "next",
        "function next(self) { self.v = self.v + 1; return self.v; }",
    )
    .await;
    assert_eq!(app.send(&o, "next", json!([])).await.1["value"], 42);
    actix_web::rt::time::sleep(Duration::from_millis(900)).await;
    let (_, health) = app.get("/api/health").await;
    assert_eq!(health["live_actors"], 0, "{health}");
    assert_eq!(app.send(&o, "next", json!([])).await.1["value"], 43);
}

#[actix_web::test]
async fn deleting_objects_and_slots() {
    let app = spawn_app().await;
    let parent = app.clone_obj("genesis_obj", json!({})).await;
    let child = app.clone_obj(&parent, json!({"k": 1})).await;
    let (status, body) = app.delete(&format!("/api/objects/{parent}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(
        app.delete(&format!("/api/objects/{child}/slots/k")).await.0,
        200
    );
    assert_eq!(
        app.delete(&format!("/api/objects/{child}/slots/k")).await.0,
        404
    );
    assert_eq!(app.delete(&format!("/api/objects/{child}")).await.0, 200);
    assert_eq!(app.get(&format!("/api/objects/{child}")).await.0, 404);
    assert_eq!(app.delete(&format!("/api/objects/{parent}")).await.0, 200);
}

#[actix_web::test]
async fn concurrent_increments_from_many_clients_are_all_kept() {
    let app = spawn_app().await;
    let counter = app.clone_obj("genesis_obj", json!({"n": 0})).await;
    app.set_method(
        &counter,
        "inc",
        "function inc(self) { self.n = self.n + 1; return self.n; }",
    )
    .await;
    let via = app.clone_obj("genesis_obj", json!({})).await;
    app.set_method(
        &via,
        "relay",
        &format!("function relay(self) {{ return send('{counter}', 'inc'); }}"),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = app.base.clone();
        let (target, sel) = if i % 2 == 0 {
            (counter.clone(), "inc")
        } else {
            (via.clone(), "relay")
        };
        tasks.push(actix_web::rt::spawn(async move {
            let c = client();
            for _ in 0..10 {
                let (s, b) = request(
                    &c,
                    "POST",
                    &format!("{base}/api/objects/{target}/send"),
                    Some(json!({"selector": sel})),
                )
                .await;
                assert_eq!(s, 200, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(app.send(&counter, "n", json!([])).await.1["value"], 80);
}

#[test]
fn the_world_survives_a_restart_with_the_same_oids_slots_and_methods() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let oid;
    {
        let server = ServerProcess::start(&data).expect("server starts");
        oid = actix_web::rt::System::new().block_on(async {
            let c = client();
            let base = &server.base;
            let oid = object_with_method(
                &c,
                base,
                json!({"name": "rect", "w": 3, "h": 4}),
                "area",
                "function area(self) { return self.w * self.h; }",
            )
            .await;
            let (_, b) = request(
                &c,
                "POST",
                &format!("{base}/api/objects/{oid}/send"),
                Some(json!({"selector": "area"})),
            )
            .await;
            assert_eq!(b["value"], 12);
            let mut ws = Ws::connect(base).await;
            let (r, _) = ws
                .call(
                    json!({"type": "send", "target": oid, "selector": "area"}),
                    "w1",
                )
                .await;
            assert_eq!(r["value"], 12);
            oid
        });
    }
    let server = ServerProcess::start(&data).expect("server restarts");
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let base = &server.base;
        let (s, v) = request(&c, "GET", &format!("{base}/api/objects/{oid}"), None).await;
        assert_eq!(s, 200);
        assert_eq!(v["slots"]["name"], "rect");
        assert_eq!(v["slots"]["w"], 3);
        assert!(
            v["slots"]["area"]["method"]["source"]
                .as_str()
                .unwrap()
                .contains("self.w * self.h")
        );
        let (_, b) = request(
            &c,
            "POST",
            &format!("{base}/api/objects/{oid}/send"),
            Some(json!({"selector": "area"})),
        )
        .await;
        assert_eq!(b["value"], 12);
    });
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = ServerProcess::start(&data).expect("first server starts");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telos"))
        .arg("serve")
        .env("TELOS_BIND", "127.0.0.1:0")
        .env("TELOS_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another"), "{stderr}");
}

#[test]
fn kill_9_during_a_burst_of_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data).expect("server starts");
    let base = server.base.clone();
    let acked: Vec<(String, i64)> = actix_web::rt::System::new().block_on(async {
        let c = client();
        let (_, b) = request(
            &c,
            "POST",
            &format!("{base}/api/objects/genesis_obj/clone"),
            Some(json!({})),
        )
        .await;
        let oid = b["oid"].as_str().unwrap().to_string();
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut i = 0i64;
        let kill_at = Instant::now() + Duration::from_millis(700);
        let mut killed = false;
        while Instant::now() < deadline {
            if !killed && Instant::now() >= kill_at {
                server.kill9();
                killed = true;
            }
            let r = c
                .put(format!("{base}/api/objects/{oid}/slots/k{i}"))
                .send_json(&json!({"value": i}))
                .await;
            if let Ok(resp) = r
                && resp.status().as_u16() == 200
            {
                acked.push((format!("k{i}"), i));
            }
            i += 1;
        }
        acked.insert(0, (oid, -1));
        acked
    });
    assert!(
        acked.len() > 10,
        "some writes were acknowledged before the kill"
    );
    let oid = acked[0].0.clone();
    let server = ServerProcess::start(&data).expect("server restarts after kill -9");
    actix_web::rt::System::new().block_on(async {
        let (_, v) = request(
            &client(),
            "GET",
            &format!("{}/api/objects/{oid}", server.base),
            None,
        )
        .await;
        for (slot, value) in &acked[1..] {
            assert_eq!(
                v["slots"][slot],
                json!(value),
                "acknowledged {slot} lost: {v}"
            );
        }
    });
}

/// Group commit and the commit log under kill -9: 16 clients increment four counters through a
/// method that also bumps a shared tally (two objects per message, so transactions conflict and
/// batch); the server is killed mid-run. After a restart every acknowledged increment is there,
/// none beyond what was sent, and no message is half-applied: the tally is the counters' sum.
#[test]
fn kill_9_under_sixteen_clients_keeps_every_acknowledged_increment_and_no_half_message() {
    use std::cell::{Cell, RefCell};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data).expect("server starts");
    let base = server.base.clone();
    let (tally, counters, acked, sent) = actix_web::rt::System::new().block_on(async {
        let c = client();
        let clone = |slots: Json| {
            let (c, url) = (c.clone(), format!("{base}/api/objects/genesis_obj/clone"));
            async move {
                let (s, b) = request(&c, "POST", &url, Some(json!({ "slots": slots }))).await;
                assert_eq!(s, 201, "{b}");
                b["oid"].as_str().unwrap().to_string()
            }
        };
        let method = |oid: String, name: &'static str, source: &'static str| {
            let (c, url) = (c.clone(), format!("{base}/api/objects/{oid}/slots/{name}"));
            async move {
                let (s, b) = request(&c, "PUT", &url, Some(json!({ "method": source }))).await;
                assert_eq!(s, 200, "{b}");
            }
        };
        let tally = clone(json!({"total": 0})).await;
        method(
            tally.clone(),
            "bump",
            "function bump(self) { self.total = self.total + 1; return self.total; }",
        )
        .await;
        let mut counters = Vec::new();
        for _ in 0..4 {
            let oid = clone(json!({"n": 0, "tally": {"$ref": tally}})).await;
            method(
                oid.clone(),
                "inc",
                "function inc(self) { self.n = self.n + 1; self.tally.bump(); return self.n; }",
            )
            .await;
            counters.push(oid);
        }
        let acked = RefCell::new(vec![0i64; 4]);
        let sent = RefCell::new(vec![0i64; 4]);
        let total = Cell::new(0usize);
        let clients = (0..16).map(|i| {
            let (c, url) = (
                c.clone(),
                format!("{base}/api/objects/{}/send", counters[i % 4]),
            );
            let (acked, sent, total) = (&acked, &sent, &total);
            async move {
                loop {
                    sent.borrow_mut()[i % 4] += 1;
                    let r = c
                        .post(&url)
                        .send_json(&json!({"selector": "inc", "args": []}))
                        .await;
                    match r {
                        Ok(resp) if resp.status().as_u16() == 200 => {
                            acked.borrow_mut()[i % 4] += 1;
                            total.set(total.get() + 1);
                        }
                        // Killed: this client stops.
                        _ => break,
                    }
                }
            }
        });
        let killer = async {
            // Mid-run: once a few hundred increments are acknowledged (bounded, whatever the
            // machine's speed).
            for _ in 0..3000 {
                if total.get() >= 300 {
                    break;
                }
                actix_web::rt::time::sleep(Duration::from_millis(10)).await;
            }
            server.kill9();
        };
        futures_util::future::join(killer, futures_util::future::join_all(clients)).await;
        (tally, counters, acked.into_inner(), sent.into_inner())
    });
    assert!(acked.iter().sum::<i64>() >= 300, "{acked:?}");
    let server = ServerProcess::start(&data).expect("server restarts after kill -9");
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let mut sum = 0;
        for (i, oid) in counters.iter().enumerate() {
            let (_, v) = request(
                &c,
                "GET",
                &format!("{}/api/objects/{oid}", server.base),
                None,
            )
            .await;
            let n = v["slots"]["n"].as_i64().unwrap();
            assert!(
                (acked[i]..=sent[i]).contains(&n),
                "counter {i}: {n} after restart, {} acknowledged, {} sent",
                acked[i],
                sent[i]
            );
            sum += n;
        }
        let (_, v) = request(
            &c,
            "GET",
            &format!("{}/api/objects/{tally}", server.base),
            None,
        )
        .await;
        assert_eq!(
            v["slots"]["total"].as_i64(),
            Some(sum),
            "a message was half-applied: the tally is not the counters' sum"
        );
    });
}

#[test]
fn config_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("telos.toml");
    std::fs::write(
        &file,
        "bind = \"127.0.0.1:1\"\nwall_time_ms = 1234\nheap_mib = 8\n",
    )
    .unwrap();
    // SAFETY: this test binary sets this variable nowhere else, and reads it right away.
    unsafe { std::env::set_var("TELOS_HEAP_MIB", "16") };
    let s = telos::Settings::load(Some(&file)).unwrap();
    unsafe { std::env::remove_var("TELOS_HEAP_MIB") };
    assert_eq!(s.bind, "127.0.0.1:1");
    assert_eq!(s.wall_time_ms, 1234);
    assert_eq!(s.heap_mib, 16, "the environment overrides the file");
    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let err = telos::Settings::load(Some(&file)).unwrap_err();
    assert!(format!("{err:#}").contains("no_such_setting"), "{err:#}");
}

#[actix_web::test]
async fn the_page_is_served() {
    let app = spawn_app().await;
    let mut resp = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.body().await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("TelOS"));
    let _: Json = app.get("/api/nothing").await.1;
}

#[test]
fn the_cli_sends_a_message_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data")).expect("server starts");
    let run = |line: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_telos"))
            .args(["send", line, "--server", &server.base])
            .output()
            .unwrap()
    };
    let out = run(r#"genesis_obj.setSlot_value_("motto", "hello")"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("genesis_obj.motto");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"hello\"");
    let out = run("genesis_obj.fly()");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does_not_understand"));
}

/// Group commit: 16 clients send a method that bumps two slots of their own counter while the
/// server is killed (SIGKILL). After a restart every acknowledged bump is there, and no bump is
/// half there (both slots always agree); at most the one bump in flight per client landed
/// without its answer.
#[test]
fn kill_9_during_concurrent_method_writes_loses_no_acknowledged_one_and_halves_none() {
    const CLIENTS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data).expect("server starts");
    let base = server.base.clone();
    let acked: Vec<(String, i64)> = actix_web::rt::System::new().block_on(async {
        let c = client();
        let mut counters = Vec::new();
        for _ in 0..CLIENTS {
            counters.push(
                object_with_method(
                    &c,
                    &base,
                    json!({"a": 0, "b": 0}),
                    "bump",
                    "function bump(self) { self.a = self.a + 1; self.b = self.b + 1; return self.a; }",
                )
                .await,
            );
        }
        // Each client bumps its counter until the server is gone; it remembers the last value
        // the server acknowledged.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let warmed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = Vec::new();
        for oid in counters {
            let (base, mut stop, warmed) = (base.clone(), stop_rx.clone(), warmed.clone());
            clients.push(actix_web::rt::spawn(async move {
                let c = client();
                let url = format!("{base}/api/objects/{oid}/send");
                let mut last = 0i64;
                loop {
                    let sent = request(
                        &c,
                        "POST",
                        &url,
                        Some(json!({"selector": "bump"})),
                    );
                    let (s, b) = tokio::select! {
                        r = sent => r,
                        _ = stop.changed() => break,
                    };
                    if s != 200 {
                        break;
                    }
                    last = b["value"].as_i64().expect("a bump answers its count");
                    if last == 5 {
                        warmed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                (oid, last)
            }));
        }
        // Kill once every client has had several bumps acknowledged (a condition, not a clock).
        while warmed.load(std::sync::atomic::Ordering::SeqCst) < CLIENTS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        let _ = stop_tx.send(true);
        let mut acked = Vec::new();
        for client in clients {
            acked.push(client.await.unwrap());
        }
        acked
    });
    assert!(
        acked.iter().filter(|(_, n)| *n > 0).count() == CLIENTS,
        "every client had bumps acknowledged before the kill: {acked:?}"
    );
    let server = ServerProcess::start(&data).expect("server restarts after kill -9");
    actix_web::rt::System::new().block_on(async {
        for (oid, last) in &acked {
            let (_, v) = request(
                &client(),
                "GET",
                &format!("{}/api/objects/{oid}", server.base),
                None,
            )
            .await;
            let (a, b) = (
                v["slots"]["a"].as_i64().unwrap(),
                v["slots"]["b"].as_i64().unwrap(),
            );
            assert_eq!(a, b, "a bump was half applied: {v}");
            assert!(
                a == *last || a == last + 1,
                "acknowledged {last} bumps, found {a}: {v}"
            );
        }
    });
}

#[actix_web::test]
async fn metrics_count_messages_by_outcome_and_time_them_in_a_histogram() {
    let app = spawn_app().await;
    let oid = app.clone_obj("genesis_obj", json!({ "n": 1 })).await;
    let (s, _) = app.send(&oid, "n", json!([])).await;
    assert_eq!(s, 200);
    let (s, _) = app.send(&oid, "nothingHere", json!([])).await;
    assert_ne!(s, 200);
    let (s, body) = app.get("/metrics").await;
    assert_eq!(s, 200);
    let text = body["raw"].as_str().expect("Prometheus text").to_string();
    for line in [
        "# TYPE telos_messages_total counter",
        "# TYPE telos_message_duration_seconds histogram",
        "# TYPE telos_ws_connections gauge",
        "# TYPE telos_script_queue_depth gauge",
        "# TYPE telos_objects gauge",
        "# TYPE telos_approvals_pending gauge",
        "# TYPE telos_jobs_running gauge",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let done = "telos_messages_total{op=\"send\",outcome=\"done\"}";
    let missed = "telos_messages_total{op=\"send\",outcome=\"does_not_understand\"}";
    let before = sample(&text, done).expect("sends that were answered are counted");
    assert!(sample(&text, missed).is_some(), "{text}");
    assert!(
        sample(&text, "telos_message_duration_seconds_count{op=\"send\"}")
            .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    // The scrape counts objects, which checkpoints the commit log first: nothing is pending.
    assert!(
        sample(&text, "telos_checkpoints_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "telos_commit_log_pending"),
        Some(0.0),
        "{text}"
    );

    let (s, _) = app.send(&oid, "n", json!([])).await;
    assert_eq!(s, 200);
    let (_, body) = app.get("/metrics").await;
    let after = sample(body["raw"].as_str().unwrap(), done).unwrap();
    assert!(after > before, "{before} then {after}");
}

#[actix_web::test]
async fn the_object_list_pages_by_an_oid_cursor_in_the_same_order_as_by_offset() {
    let app = spawn_app().await;
    for i in 0..25 {
        app.clone_obj("genesis_obj", json!({ "i": i })).await;
    }
    let (s, all) = app.get("/api/objects?limit=1000").await;
    assert_eq!(s, 200);
    let all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["oid"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 30, "{all:?}");
    let mut walked = Vec::new();
    let mut after = String::new();
    loop {
        let (s, page) = app
            .get(&format!("/api/objects?limit=7&after={after}"))
            .await;
        assert_eq!(s, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last["oid"].as_str().unwrap().to_string();
        walked.extend(page.iter().map(|o| o["oid"].as_str().unwrap().to_string()));
    }
    assert_eq!(walked, all);
    let (s, body) = app.get("/api/objects?after=genesis_obj&offset=3").await;
    assert_eq!(s, 400, "{body}");
}
