//! The embedder: the real all-MiniLM-L6-v2 on libtorch, against reference vectors made by
//! sentence-transformers.

use serde_json::{Value as Json, json};

use crate::common::spawn_app;

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
