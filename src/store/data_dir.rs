//! The data directory: its lock, the damage marker, and the watch for storage corruption.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The marker a damaged data directory carries until it is replaced by a restore.
pub const DAMAGED_MARKER: &str = "DAMAGED";

static CORRUPTION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A tracing layer that notices the storage engine reporting corruption.
///
/// SurrealKV, on finding a bad checksum in its write-ahead log, truncates the log at that point
/// and carries on: every commit after the damage would be dropped without an error. Its log
/// events are the only signal it gives, so the server listens for them while opening the
/// database and refuses to start (see [`Store::open`]).
pub struct CorruptionWatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CorruptionWatch {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN {
            return;
        }
        // SurrealKV logs through the `log` crate: its target arrives as a `log.target` field.
        #[derive(Default)]
        struct Fields {
            message: String,
            target: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "log.target" {
                    self.target = value.to_string();
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "log.target" => self.target = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let from_kv = meta.target().starts_with("surrealkv") || f.target.starts_with("surrealkv");
        if from_kv && f.message.to_lowercase().contains("corrupt") {
            let mut slot = CORRUPTION.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(f.message);
        }
    }
}

pub(super) fn take_corruption() -> Option<String> {
    CORRUPTION.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Refuses a data directory marked damaged, with the way out.
pub(super) fn check_not_damaged(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(DAMAGED_MARKER);
    if let Ok(detail) = std::fs::read_to_string(&marker) {
        bail!(
            "the database in {} is damaged and TelOS will not start on it, so nothing is silently lost ({}). \
             Restore the newest good backup with ./ops/restore.sh (see \"Recovering a damaged database\" in the README); \
             the damaged directory is kept aside",
            dir.display(),
            detail.trim()
        );
    }
    Ok(())
}

/// Refuses to awaken an empty world where one was expected: the data directory is missing or
/// has no database, yet beside it lie the remains of a restore (`DATA.restore-*`) or a data
/// directory moved aside (`DATA.broken-*`). Starting would silently begin a new, empty world.
pub fn check_world_expected(data_dir: &Path) -> anyhow::Result<()> {
    if data_dir.join("world").exists() {
        return Ok(());
    }
    let Some(name) = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Ok(());
    };
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{name}.restore-")) || n.starts_with(&format!("{name}.broken-"))
        })
        .collect();
    found.sort();
    if let Some(last) = found.last() {
        bail!(
            "{} holds no world, but {} lies beside it: a restore was interrupted or the data directory was moved aside. \
             Run ./ops/restore.sh again, or move {} back to {}; to really start an empty world, move it elsewhere first",
            data_dir.display(),
            parent.join(last).display(),
            parent.join(last).display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// Takes the data directory's lock file; a second process gets a clear error.
pub(super) fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("telos.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the database in {} is in use by another TelOS process (lock file {} is held); stop that server or choose another TELOS_DATA_DIR",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
