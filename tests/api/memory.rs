//! The embedder: the real all-MiniLM-L6-v2 on libtorch, against reference vectors made by
//! sentence-transformers.

use serde_json::{Value as Json, json};

use crate::common::{ServerProcess, client, request, spawn_app};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[actix_web::test]
async fn embeddings_match_the_sentence_transformers_reference() {
    let reference: Json =
        serde_json::from_str(include_str!("../fixtures/minilm-reference.json")).unwrap();
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/api/memory/embed",
            json!({ "texts": reference["sentences"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dims"], 384);
    let got = body["vectors"].as_array().unwrap();
    let want = reference["embeddings"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (floats(g), floats(w));
        assert_eq!(g.len(), 384);
        let norm: f64 = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
        let c = cosine(&g, &w);
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }
    let (_, health) = app.get("/api/health").await;
    assert_eq!(health["personas"]["embedder_loaded"], true, "{health}");
    let (status, body) = app
        .post("/api/memory/embed", json!({ "texts": "not a list" }))
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
}

/// A REST client for a server running as a child process.
struct Remote {
    c: awc::Client,
    base: String,
}

impl Remote {
    fn of(server: &ServerProcess) -> Remote {
        Remote {
            c: client(),
            base: server.base.clone(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Json) {
        request(&self.c, "GET", &format!("{}{path}", self.base), None).await
    }

    async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        request(&self.c, "POST", &format!("{}{path}", self.base), Some(body)).await
    }

    async fn remember(&self, texts: &[&str]) -> Vec<u64> {
        let items: Vec<Json> = texts.iter().map(|t| json!({ "text": t })).collect();
        let (s, v) = self
            .post("/api/memory/records", json!({ "items": items }))
            .await;
        assert_eq!(s, 201, "{v}");
        v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap())
            .collect()
    }

    /// `(id, distance)` of the hits for `q`, closest first.
    async fn search(&self, q: &str, k: usize) -> Vec<(u64, f64)> {
        let (s, v) = self
            .get(&format!("/api/memory/search?q={}&k={k}", urlencode(q)))
            .await;
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| (h["id"].as_u64().unwrap(), h["distance"].as_f64().unwrap()))
            .collect()
    }

    /// Texts embedded by the model host since the server started.
    async fn embedded(&self) -> u64 {
        let (_, h) = self.get("/api/health").await;
        h["personas"]["embedded_texts"].as_u64().unwrap()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const RECTANGLE: &str = "Computes the area of a rectangle by multiplying its width by its height.";
const GREETING: &str = "Greets a person by name with a friendly hello.";
const SUM: &str = "Adds up all the numbers in a list and returns their sum.";

fn same_hits(a: &[(u64, f64)], b: &[(u64, f64)]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "{a:?} vs {b:?}");
        assert!((x.1 - y.1).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

/// Nearest neighbour, restart without re-embedding, and rebuilds of a missing, truncated or
/// garbage index file — one world, restarted several times.
#[test]
fn memories_are_found_and_survive_restarts_and_a_damaged_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let index = data.join("memory.usearch");
    let sys = actix_web::rt::System::new();

    let mut server = ServerProcess::start(&data).unwrap();
    let (rect, before) = sys.block_on(async {
        let r = Remote::of(&server);
        let ids = r.remember(&[GREETING, RECTANGLE, SUM]).await;
        let hits = r.search("area of a rectangle", 3).await;
        assert_eq!(hits.len(), 3);
        assert_eq!(
            hits[0].0, ids[1],
            "the rectangle record comes first: {hits:?}"
        );
        assert!(hits[0].1 < hits[1].1);
        let (_, h) = r.get("/api/health").await;
        assert_eq!(h["memory"]["records"], 3, "{h}");
        (ids[1], hits)
    });
    server.kill9();
    assert!(index.exists(), "the index file was written");

    // A restart re-embeds nothing: the index is loaded (and caught up) from stored vectors.
    let mut server = ServerProcess::start(&data).unwrap();
    sys.block_on(async {
        let r = Remote::of(&server);
        assert_eq!(r.embedded().await, 0, "nothing embedded at start");
        same_hits(&r.search("area of a rectangle", 3).await, &before);
        assert_eq!(r.embedded().await, 1, "only the query was embedded");
    });
    server.kill9();

    type Damage = (&'static str, fn(&std::path::Path));
    let damages: [Damage; 3] = [
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
        ("truncated", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 3]).unwrap();
        }),
        ("garbage", |p| {
            std::fs::write(p, b"this is not an index at all \x00\x01\x02").unwrap()
        }),
    ];
    for (what, damage) in damages {
        damage(&index);
        let mut server = ServerProcess::start(&data)
            .unwrap_or_else(|e| panic!("starts with a {what} index: {e}"));
        sys.block_on(async {
            let r = Remote::of(&server);
            assert_eq!(r.embedded().await, 0, "{what}: rebuilt without embedding");
            let hits = r.search("area of a rectangle", 3).await;
            assert_eq!(hits[0].0, rect, "{what}");
            same_hits(&hits, &before);
            let (_, h) = r.get("/api/health").await;
            assert!(
                h["memory"]["index_at_start"]
                    .as_str()
                    .unwrap()
                    .starts_with("rebuilt"),
                "{what}: {h}"
            );
        });
        let log = server.kill9_and_stderr();
        assert!(
            log.contains("memory index unusable: rebuilding it from the stored vectors"),
            "{what}: {log}"
        );
        assert!(
            log.contains("memory.usearch"),
            "{what}: the log names the file: {log}"
        );
    }
}

#[test]
fn every_acknowledged_memory_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sys = actix_web::rt::System::new();
    let texts: Vec<String> = (0..25)
        .map(|i| {
            format!(
                "Memory number {i}: the {i}th recipe uses {} eggs and a pinch of salt.",
                i + 2
            )
        })
        .collect();
    let mut server =
        ServerProcess::start_with(&data, &[("TELOS_MEMORY_SAVE_EVERY", "10")]).unwrap();
    let ids = sys.block_on(async {
        let r = Remote::of(&server);
        let mut ids = Vec::new();
        for t in &texts {
            ids.extend(r.remember(&[t.as_str()]).await);
        }
        let (_, h) = r.get("/api/health").await;
        assert_eq!(h["memory"]["unsaved"], 5, "saved at 10 and 20: {h}");
        ids
    });
    server.kill9();
    let mut server =
        ServerProcess::start_with(&data, &[("TELOS_MEMORY_SAVE_EVERY", "10")]).unwrap();
    sys.block_on(async {
        let r = Remote::of(&server);
        let (_, h) = r.get("/api/health").await;
        assert_eq!(h["memory"]["records"], 25, "{h}");
        assert_eq!(h["memory"]["index_at_start"], "loaded", "{h}");
        for (t, id) in texts.iter().zip(&ids) {
            let hits = r.search(t, 1).await;
            assert_eq!(hits[0].0, *id, "{t}");
        }
        assert_eq!(r.embedded().await, 25, "only the 25 queries were embedded");
    });
    server.kill9();
}

/// Polls search until `check` accepts the hits (the Retrievable indexer runs after the commit).
async fn eventually(app: &crate::common::TestApp, q: &str, check: impl Fn(&Json) -> bool) -> Json {
    for _ in 0..100 {
        let (s, v) = app
            .get(&format!("/api/memory/search?q={}&k=3", urlencode(q)))
            .await;
        assert_eq!(s, 200, "{v}");
        if check(&v) {
            return v;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("search for {q:?} never showed the expected hits");
}

#[actix_web::test]
async fn a_retrievable_object_is_found_by_what_its_method_does() {
    let app = spawn_app().await;
    let noise = app
        .clone_obj(
            "Retrievable",
            json!({"name": "greeter", "purpose": "Says hello to visitors."}),
        )
        .await;
    app.set_method(
        &noise,
        "greet",
        "function greet(self, who) { return 'Hello, ' + who + '!'; }",
    )
    .await;
    let oid = app
        .clone_obj(
            "Retrievable",
            json!({"name": "rectangle", "width": 3, "height": 4}),
        )
        .await;
    app.set_method(
        &oid,
        "area",
        "function area(self) { return self.width * self.height; }",
    )
    .await;
    let owner_first = |oid: String| move |v: &Json| v[0]["owner"] == oid.as_str();
    let v = eventually(
        &app,
        "how much surface does a box shape cover",
        owner_first(oid.clone()),
    )
    .await;
    let method_hit = v.as_array().unwrap().iter().any(|h| {
        h["owner"] == oid.as_str()
            && h["text"]
                .as_str()
                .unwrap()
                .contains("self.width * self.height")
    });
    assert!(method_hit, "the method's chunk is among the hits: {v}");

    // Change the method: the old chunk is forgotten, the new one is found.
    app.set_method(
        &oid,
        "area",
        "function area(self) { return 'the temperature in Celsius is ' + ((self.width - 32) * 5 / 9); }",
    )
    .await;
    // Waits for the new chunk itself: the object's other chunks may rank first before it lands.
    let celsius = oid.clone();
    eventually(
        &app,
        "convert Fahrenheit to Celsius temperature",
        move |v: &Json| {
            v.as_array().is_some_and(|hits| {
                hits.iter().any(|h| {
                    h["owner"] == celsius.as_str()
                        && h["text"].as_str().unwrap_or_default().contains("Celsius")
                })
            })
        },
    )
    .await;
    let (_, records) = app.get(&format!("/api/memory/records?owner={oid}")).await;
    let texts: Vec<&str> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(
        !texts.iter().any(|t| t.contains("self.width * self.height")),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains("Celsius")), "{texts:?}");

    // A plain object (not Retrievable) is not indexed; deleting a Retrievable forgets it.
    let plain = app.clone_obj("genesis_obj", json!({"name": "plain"})).await;
    app.set_method(&plain, "area", "function area(self) { return 1; }")
        .await;
    let (s, _) = app.delete(&format!("/api/objects/{oid}")).await;
    assert_eq!(s, 200);
    for _ in 0..100 {
        let (_, r) = app.get(&format!("/api/memory/records?owner={oid}")).await;
        if r["total"] == 0 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, r) = app.get(&format!("/api/memory/records?owner={oid}")).await;
    assert_eq!(r["total"], 0, "forgotten after delete: {r}");
    let (_, r) = app.get(&format!("/api/memory/records?owner={plain}")).await;
    assert_eq!(r["total"], 0, "plain objects are not indexed: {r}");
}

#[actix_web::test]
async fn concurrent_embeddings_share_forward_passes() {
    let app = spawn_app().await;
    // Load the model first so the burst is not queued behind loading.
    let (s, _) = app
        .post("/api/memory/embed", json!({"texts": ["warm up"]}))
        .await;
    assert_eq!(s, 200);
    let (_, h) = app.get("/api/health").await;
    let batches_before = h["personas"]["batches"].as_u64().unwrap();
    let calls = (0..16).map(|i| {
        let app = &app;
        async move {
            let (s, v) = app
                .post(
                    "/api/memory/embed",
                    json!({"texts": [format!("sentence number {i}")]}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["vectors"].as_array().unwrap().len(), 1);
        }
    });
    futures_util::future::join_all(calls).await;
    let (_, h) = app.get("/api/health").await;
    let batches = h["personas"]["batches"].as_u64().unwrap() - batches_before;
    assert!(
        batches < 16,
        "16 single-text requests took {batches} forward passes"
    );
    assert_eq!(h["personas"]["embedded_texts"], 17);
}

#[actix_web::test]
async fn memory_endpoints_reject_bad_input() {
    let app = spawn_app().await;
    let (s, v) = app.get("/api/memory/search?q=&k=3").await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    let (s, v) = app.get("/api/memory/search?k=3").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app.post("/api/memory/records", json!({"items": []})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app
        .post("/api/memory/records", json!({"items": [{"text": "  "}]}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app
        .post("/api/memory/records", json!({"items": [{"txt": "typo"}]}))
        .await;
    assert_eq!(s, 400, "{v}");
    // A kind is method, object or note: anything else is named back, never stored as a note.
    let (s, v) = app
        .post(
            "/api/memory/records",
            json!({"items": [{"text": "a fact", "kind": "fact"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"fact\""), "{v}");
    let (s, v) = app.get("/api/memory/search?q=area&k=3&kind=fact").await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("method, object or note"),
        "{v}"
    );
    let (s, v) = app.post("/api/memory/reindex", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["records"], 0);
}
