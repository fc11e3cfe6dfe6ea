//! Kernel figures (`telos bench --kernel`): with the configured persona backend (the real local
//! model by default), a first miss (`area` on a fresh rectangle), a second, similar miss
//! (`perimeter` on a sibling: recall offers `area` as an example) and a repeat miss of `area`
//! on another sibling (the reuse path), each with its time per stage.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;

use crate::app::Application;
use crate::config::Settings;
use crate::kernel::Status;
use crate::sandbox::Op;

pub fn run(mut settings: Settings) -> anyhow::Result<()> {
    let dir = super::scratch_world(&mut settings, "telos-bench-kernel");
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let telos = app.telos().clone();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let clone = |parent: &str, name: &str| {
            let telos = telos.clone();
            let (parent, name) = (parent.to_string(), name.to_string());
            async move {
                let mut slots = serde_json::Map::new();
                slots.insert("name".into(), json!(name));
                slots.insert("width".into(), json!(3));
                slots.insert("height".into(), json!(4));
                let v = telos.call(&parent, Op::Clone { slots }).await.result?;
                Ok::<_, anyhow::Error>(v["oid"].as_str().unwrap_or_default().to_string())
            }
        };
        let proto = clone("genesis_obj", "rectangle").await?;
        let a = clone(&proto, "rectangle a").await?;
        let b = clone(&proto, "rectangle b").await?;
        let c = clone(&proto, "rectangle c").await?;
        let mut totals = Vec::new();
        for (label, oid, selector, args) in [
            (
                "first miss: area on a fresh rectangle",
                &a,
                "area",
                json!([3, 4]),
            ),
            (
                "similar miss: perimeter on a sibling",
                &b,
                "perimeter",
                json!([]),
            ),
            (
                "repeat miss: area on another sibling (reuse)",
                &c,
                "area",
                json!([3, 4]),
            ),
        ] {
            let mut stages = telos.stages.subscribe();
            let t = Instant::now();
            let reply = telos
                .send(oid, selector, args.as_array().cloned().unwrap_or_default())
                .await;
            let total = t.elapsed();
            let mut started: BTreeMap<String, u64> = BTreeMap::new();
            let mut took: Vec<(String, u64)> = Vec::new();
            while let Ok(e) = stages.try_recv() {
                match e.status {
                    Status::Started => {
                        started.insert(e.stage.as_str().to_string(), e.at_ms);
                    }
                    _ => {
                        let from = started.remove(e.stage.as_str()).unwrap_or(e.at_ms);
                        took.push((
                            format!(
                                "{}{}",
                                e.stage,
                                if e.status == Status::Failed {
                                    "(failed)"
                                } else {
                                    ""
                                }
                            ),
                            e.at_ms.saturating_sub(from),
                        ));
                    }
                }
            }
            let per_stage: Vec<String> =
                took.iter().map(|(s, ms)| format!("{s} {ms} ms")).collect();
            println!(
                "{label}: {:.2} s -> {} [{}]",
                total.as_secs_f64(),
                match &reply.result {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                },
                per_stage.join(", ")
            );
            totals.push(total.as_secs_f64());
        }
        if totals.len() == 3 && totals[2] > 0.0 {
            println!(
                "reuse answers {:.1}x faster than the first full generation",
                totals[0] / totals[2]
            );
        }
        server.abort();
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}
