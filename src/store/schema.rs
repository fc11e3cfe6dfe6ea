//! The schema files, applied at every start.

use anyhow::Context as _;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

/// The schema files, applied in this order at every start (each is idempotent).
pub const SCHEMA: &[(&str, &str)] = &[
    (
        "001_objects.surql",
        include_str!("../../schema/001_objects.surql"),
    ),
    (
        "002_backups.surql",
        include_str!("../../schema/002_backups.surql"),
    ),
    (
        "003_memory.surql",
        include_str!("../../schema/003_memory.surql"),
    ),
    (
        "004_kernel.surql",
        include_str!("../../schema/004_kernel.surql"),
    ),
    (
        "005_memory_origin.surql",
        include_str!("../../schema/005_memory_origin.surql"),
    ),
    (
        "006_memory_vector_text.surql",
        include_str!("../../schema/006_memory_vector_text.surql"),
    ),
];

pub(super) async fn apply_schema(db: &Surreal<Any>) -> anyhow::Result<()> {
    for (name, text) in SCHEMA {
        db.query(*text)
            .await
            .and_then(|r| r.check())
            .with_context(|| format!("applying schema file {name}"))?;
    }
    db.query("UPSERT meta:schema SET version = $v, files = $files RETURN NONE")
        .bind(("v", SCHEMA.len() as i64))
        .bind((
            "files",
            SCHEMA
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>(),
        ))
        .await
        .and_then(|r| r.check())
        .context("recording the schema version")?;
    Ok(())
}
