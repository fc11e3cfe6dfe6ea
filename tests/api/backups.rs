//! Backups: real database, real files, real restores.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Value as Json, json};
use telos::backup::{self, Kind, Retention};
use telos::sandbox::Op;

use crate::common::{ServerProcess, client, request, spawn_app};

/// Every object's REST view except `backup_manager` (which records each backup's result just
/// after the backup is taken), keyed by oid.
async fn world_view(c: &awc::Client, base: &str) -> BTreeMap<String, Json> {
    let (_, list) = request(c, "GET", &format!("{base}/api/objects?limit=1000"), None).await;
    let mut out = BTreeMap::new();
    for o in list.as_array().unwrap() {
        let oid = o["oid"].as_str().unwrap();
        if oid == "backup_manager" {
            continue;
        }
        let (_, v) = request(c, "GET", &format!("{base}/api/objects/{oid}"), None).await;
        out.insert(oid.to_string(), v);
    }
    out
}

fn telos_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_telos"))
        .args(args)
        .env("TELOS_LOG", "warn")
        .output()
        .unwrap()
}

/// Restores the newest backup (or `id`) with the CLI into `to`.
fn cli_restore(backups: &Path, id: Option<&str>, to: &Path) -> std::process::Output {
    let mut args = vec!["restore"];
    if let Some(id) = id {
        args.push(id);
    }
    let to = to.to_string_lossy().into_owned();
    let dir = backups.to_string_lossy().into_owned();
    args.extend(["--to", &to, "--backup-dir", &dir]);
    telos_cmd(&args)
}

/// Clones of a `maker` object, made by a method (one message clones up to 1,000): `batches`
/// messages of that many each.
async fn make_objects(app: &crate::common::TestApp, batches: &[u64]) {
    let maker = app.clone_obj("genesis_obj", json!({"name": "maker"})).await;
    app.set_method(
        &maker,
        "make",
        "function make(self, n) { for (let i = 0; i < n; i++) clone(self, { i: i }); return n; }",
    )
    .await;
    for n in batches {
        let (s, body) = app.send(&maker, "make", json!([n])).await;
        assert_eq!(s, 200, "{body}");
    }
}

async fn post(c: &awc::Client, url: String, body: Json) -> (u16, Json) {
    request(c, "POST", &url, Some(body)).await
}

#[test]
fn a_full_backup_restores_an_identical_world() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let server = ServerProcess::start(&data).unwrap();
    let before = actix_web::rt::System::new().block_on(async {
        let c = client();
        let b = &server.base;
        for i in 0..20 {
            let (s, v) = post(
                &c,
                format!("{b}/api/objects/genesis_obj/clone"),
                json!({"slots": {"i": i, "tags": ["x", {"deep": i}]}}),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            let oid = v["oid"].as_str().unwrap();
            let (s, _) = request(
                &c,
                "PUT",
                &format!("{b}/api/objects/{oid}/slots/twice"),
                Some(json!({"method": "function twice(self) { return self.i * 2; }"})),
            )
            .await;
            assert_eq!(s, 200);
        }
        let (s, m) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
        assert_eq!(s, 201, "{m}");
        assert_eq!(m["kind"], "full");
        assert_eq!(m["total_objects"], 25);
        let (_, list) = request(&c, "GET", &format!("{b}/api/backups"), None).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (_, health) = request(&c, "GET", &format!("{b}/api/health"), None).await;
        assert_eq!(health["backups"]["count"], 1, "{health}");
        world_view(&c, b).await
    });
    drop(server);

    let restored = dir.path().join("restored");
    let out = cli_restore(&backups, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(&restored).unwrap();
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let after = world_view(&c, &server.base).await;
        assert_eq!(after, before, "the restored world is identical");
        let oid = after.keys().find(|k| k.starts_with('o')).unwrap();
        let (_, v) = request(
            &c,
            "POST",
            &format!("{}/api/objects/{oid}/send", server.base),
            Some(json!({"selector": "twice"})),
        )
        .await;
        assert!(v["value"].is_number(), "methods run after a restore: {v}");
    });
}

#[actix_web::test]
async fn full_then_incrementals_restore_exactly_the_last_state_including_deletions() {
    let app = spawn_app().await;
    let c = client();
    let b = app.base.clone();
    let backups = app.dir.path().join("backups");
    let mut oids = Vec::new();
    for i in 0..6 {
        oids.push(app.clone_obj("genesis_obj", json!({"n": i})).await);
    }
    let (s, full) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
    assert_eq!(s, 201, "{full}");
    // Changes, including deletions, then an incremental.
    assert_eq!(
        app.delete(&format!("/api/objects/{}", oids[0])).await.0,
        200
    );
    app.put(
        &format!("/api/objects/{}/slots/n", oids[1]),
        json!({"value": 100}),
    )
    .await;
    app.delete(&format!("/api/objects/{}/slots/n", oids[2]))
        .await;
    let new1 = app
        .clone_obj("genesis_obj", json!({"born": "after full"}))
        .await;
    let (s, i1) = post(
        &c,
        format!("{b}/api/backups"),
        json!({"kind": "incremental"}),
    )
    .await;
    assert_eq!((s, i1["kind"].as_str()), (201, Some("incremental")), "{i1}");
    assert_eq!(i1["parent"], full["id"]);
    assert_eq!(i1["counts"]["tombstone"], 1);
    // More changes, another incremental.
    assert_eq!(app.delete(&format!("/api/objects/{new1}")).await.0, 200);
    app.put(
        &format!("/api/objects/{}/slots/n", oids[3]),
        json!({"value": "changed"}),
    )
    .await;
    let (s, i2) = post(
        &c,
        format!("{b}/api/backups"),
        json!({"kind": "incremental"}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(i2["previous"], i1["id"]);
    let expected = world_view(&c, &b).await;
    // Changes after the last backup are not part of it.
    app.put(
        &format!("/api/objects/{}/slots/n", oids[4]),
        json!({"value": "too late"}),
    )
    .await;

    let restored = app.dir.path().join("restored");
    let out = cli_restore(&backups, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(&restored).unwrap();
    let got = world_view(&c, &server.base).await;
    assert_eq!(got, expected);
    assert!(
        !got.contains_key(&oids[0]) && !got.contains_key(&new1),
        "deletions carried"
    );

    // Restoring to the first incremental gives that state, not the last one.
    let mid = app.dir.path().join("mid");
    let out = cli_restore(&backups, i1["id"].as_str(), &mid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(&mid).unwrap();
    let got = world_view(&c, &server.base).await;
    assert!(got.contains_key(&new1));
    assert_eq!(got[&oids[3]]["slots"]["n"], 3);
}

#[actix_web::test]
async fn a_flipped_byte_fails_verification_naming_the_file_and_restore_refuses() {
    let app = spawn_app().await;
    let c = client();
    let b = app.base.clone();
    app.clone_obj("genesis_obj", json!({"x": 1})).await;
    let (_, m) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
    let id = m["id"].as_str().unwrap().to_string();
    let (s, v) = post(&c, format!("{b}/api/backups/{id}/verify"), json!({})).await;
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "{v}");

    let file = app
        .dir
        .path()
        .join("backups")
        .join(&id)
        .join("objects.jsonl");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let (_, v) = post(&c, format!("{b}/api/backups/{id}/verify"), json!({})).await;
    assert_eq!(v["ok"], false);
    assert!(
        v["detail"].as_str().unwrap().contains("objects.jsonl"),
        "{v}"
    );
    let (_, list) = app.get("/api/backups").await;
    assert_eq!(
        list[0]["verification"]["ok"], false,
        "the result is recorded"
    );
    let (_, mgr) = app.get("/api/objects/backup_manager").await;
    assert_eq!(
        mgr["slots"]["last_verify"]["ok"], false,
        "and kept in the world"
    );

    let out = telos_cmd(&[
        "verify",
        &id,
        "--backup-dir",
        &app.dir.path().join("backups").to_string_lossy(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("objects.jsonl"));
    let to = app.dir.path().join("restored");
    let out = cli_restore(&app.dir.path().join("backups"), Some(&id), &to);
    assert!(!out.status.success(), "restore refuses a damaged backup");
    assert!(String::from_utf8_lossy(&out.stderr).contains("objects.jsonl"));
    assert!(!to.join("world").exists(), "nothing was half-restored");
}

#[actix_web::test]
async fn retention_keeps_the_policy_set_and_every_kept_incremental_restores() {
    let app = spawn_app().await;
    let telos = app.telos.clone();
    let dir = app.dir.path().join("retention");
    let store = telos.world.store().clone();
    let t0: DateTime<Utc> = "2026-01-04T03:00:00Z".parse().unwrap();
    let incr_days: Vec<i64> = (1..42).filter(|d| d % 7 != 0).collect::<Vec<_>>();
    let incr_days = &incr_days[incr_days.len() - 20..];
    let oid = app.clone_obj("genesis_obj", json!({"day": -1})).await;
    let mut made = Vec::new();
    for day in 0..42i64 {
        let full = day % 7 == 0;
        if !full && !incr_days.contains(&day) {
            continue;
        }
        telos
            .call(
                &oid,
                Op::SetValue {
                    name: "day".into(),
                    value: json!(day),
                },
            )
            .await
            .result
            .unwrap();
        let now = t0 + ChronoDuration::days(day);
        let kind = if full { Kind::Full } else { Kind::Incremental };
        telos.world.settled().await.unwrap();
        let m = backup::take(&store, &dir, kind, now).await.unwrap();
        made.push((day, m.id.clone(), m.kind));
        backup::purge(&dir, now, Retention::default()).unwrap();
    }
    assert_eq!(made.iter().filter(|(_, _, k)| *k == Kind::Full).count(), 6);
    assert_eq!(
        made.iter()
            .filter(|(_, _, k)| *k == Kind::Incremental)
            .count(),
        20
    );
    // Policy: the last 4 fulls (days 14..35) and incrementals of the last 14 days (day >= 27),
    // plus what those need: each incremental builds on the one before it, back to its full
    // (day 21), so days 22..26 stay too.
    let last_day = 41;
    let oldest_kept_incr = incr_days
        .iter()
        .copied()
        .find(|d| *d >= last_day - 14)
        .unwrap();
    let its_full = oldest_kept_incr - oldest_kept_incr % 7;
    let expected: Vec<String> = made
        .iter()
        .filter(|(day, _, kind)| match kind {
            Kind::Full => *day >= 14,
            Kind::Incremental => *day > its_full,
        })
        .map(|(_, id, _)| id.clone())
        .collect();
    let kept: Vec<String> = backup::list(&dir)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(kept, expected);
    for (day, id, kind) in made.iter().filter(|(_, id, _)| kept.contains(id)) {
        if *kind != Kind::Incremental {
            continue;
        }
        let to = app.dir.path().join(format!("r-{day}"));
        let out = cli_restore(&dir, Some(id), &to);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = telos::store::StoreConfig {
            data_dir: to.clone(),
            ..telos.settings.store_config()
        };
        let day = *day;
        let oid = oid.clone();
        let value = tokio::task::spawn_blocking(move || {
            let s = telos::store::Store::open(&cfg).unwrap();
            s.load_blocking(&oid).unwrap().unwrap().slots["day"].clone()
        })
        .await
        .unwrap();
        assert_eq!(
            value,
            telos::object::Slot::Value(json!(day)),
            "incremental of day {day}"
        );
    }
}

#[test]
fn a_corrupted_database_is_refused_and_the_readme_recovery_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let server = ServerProcess::start(&data).unwrap();
    let keep = actix_web::rt::System::new().block_on(async {
        let c = client();
        let b = &server.base;
        let (_, v) = post(
            &c,
            format!("{b}/api/objects/genesis_obj/clone"),
            json!({"slots": {"name": "keeper"}}),
        )
        .await;
        for i in 0..80 {
            post(
                &c,
                format!("{b}/api/objects/genesis_obj/clone"),
                json!({"slots": {"i": i, "pad": "p".repeat(200)}}),
            )
            .await;
        }
        let (s, _) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
        assert_eq!(s, 201);
        v["oid"].as_str().unwrap().to_string()
    });
    drop(server); // kill -9

    // Overwrite part of the database's write-ahead log while the server is stopped.
    let wal = std::fs::read_dir(data.join("world/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 2000].fill(0xff);
    std::fs::write(&wal, bytes).unwrap();

    let err = ServerProcess::start(&data)
        .err()
        .expect("the server refuses to start");
    assert!(err.contains("damaged"), "{err}");
    let err = ServerProcess::start(&data)
        .err()
        .expect("and keeps refusing");
    assert!(err.contains("damaged"), "{err}");

    // The README's recovery steps.
    let env = |cmd: &mut Command| {
        cmd.env("TELOS_BIN", env!("CARGO_BIN_EXE_telos"))
            .env("TELOS_DATA_DIR", &data)
            .env("TELOS_BACKUP_DIR", &backups)
            .env("TELOS_LOG", "warn")
            .current_dir(env!("CARGO_MANIFEST_DIR"));
    };
    let mut verify = Command::new("ops/verify.sh");
    env(&mut verify);
    let out = verify.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restore = Command::new("ops/restore.sh");
    env(&mut restore);
    let out = restore.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("data.broken-")
    }));

    let server = ServerProcess::start(&data).expect("the restored world starts");
    actix_web::rt::System::new().block_on(async {
        let (s, v) = request(
            &client(),
            "GET",
            &format!("{}/api/objects/{keep}", server.base),
            None,
        )
        .await;
        assert_eq!((s, v["slots"]["name"].as_str()), (200, Some("keeper")));
        let (_, h) = request(
            &client(),
            "GET",
            &format!("{}/api/health", server.base),
            None,
        )
        .await;
        assert_eq!(h["objects"], 86);
    });
}

#[actix_web::test]
async fn a_backup_taken_during_continuous_writes_restores_to_a_consistent_world() {
    let app = spawn_app().await;
    let c = client();
    let b = app.base.clone();
    let bank = app.clone_obj("genesis_obj", json!({"bal": 100})).await;
    app.set_method(
        &bank,
        "credit",
        "function credit(self, n) { self.bal = self.bal + n; return self.bal; }",
    )
    .await;
    app.set_method(&bank, "pay", "function pay(self, to, n) { self.bal = self.bal - n; send(to, 'credit', n); return self.bal; }").await;
    let mut accounts = Vec::new();
    for _ in 0..8 {
        accounts.push(app.clone_obj(&bank, json!({"bal": 100})).await);
    }
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let mut writers = Vec::new();
    for i in 0..8 {
        let from = accounts[i].clone();
        let to = accounts[(i + 1) % 8].clone();
        let base = b.clone();
        writers.push(actix_web::rt::spawn(async move {
            let c = client();
            let mut n = 0;
            while Instant::now() < stop_at {
                let (s, v) = request(
                    &c,
                    "POST",
                    &format!("{base}/api/objects/{from}/send"),
                    Some(json!({"selector": "pay", "args": [{"$ref": to}, 1]})),
                )
                .await;
                assert_eq!(s, 200, "{v}");
                n += 1;
            }
            n
        }));
    }
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    let (s, _) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
    assert_eq!(s, 201);
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    let (s, last) = post(
        &c,
        format!("{b}/api/backups"),
        json!({"kind": "incremental"}),
    )
    .await;
    assert_eq!(s, 201);
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    assert!(total > 50, "writes kept coming: {total}");

    for id in [None, last["id"].as_str()] {
        let to = app.dir.path().join(format!("restored-{}", id.is_some()));
        let out = cli_restore(&app.dir.path().join("backups"), id, &to);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = ServerProcess::start(&to).unwrap();
        let mut sum = 0;
        for a in &accounts {
            let (_, v) =
                request(&c, "GET", &format!("{}/api/objects/{a}", server.base), None).await;
            sum += v["slots"]["bal"].as_i64().unwrap();
        }
        assert_eq!(sum, 800, "no half-applied payment in the backup");
    }
}

#[test]
fn the_schedule_survives_a_restart_and_a_missed_run_happens_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data).unwrap();
    // A daily incremental due 3 s from now, while the server will be down.
    let due = Utc::now() + ChronoDuration::seconds(3);
    let expr = due.format("%S %M %H * * *").to_string();
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let b = &server.base;
        let (s, v) = request(
            &c,
            "PUT",
            &format!("{b}/api/backups/schedule"),
            Some(json!({"incremental": "0 3 * * *"})),
        )
        .await;
        assert_eq!(s, 400, "five-field cron is explained: {v}");
        assert!(v["message"].as_str().unwrap().contains("six"), "{v}");
        let (s, v) = request(
            &c,
            "PUT",
            &format!("{b}/api/backups/schedule"),
            Some(json!({"incremental": expr})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    });
    drop(server);
    std::thread::sleep(Duration::from_secs(5));

    let count_backups = |base: &str| {
        actix_web::rt::System::new().block_on(async {
            let c = client();
            // The missed run happens in the background right after start.
            for _ in 0..100 {
                let (_, list) = request(&c, "GET", &format!("{base}/api/backups"), None).await;
                if !list.as_array().unwrap().is_empty() {
                    break;
                }
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
            let (_, sched) =
                request(&c, "GET", &format!("{base}/api/backups/schedule"), None).await;
            let (_, list) = request(&c, "GET", &format!("{base}/api/backups"), None).await;
            (sched, list.as_array().unwrap().len())
        })
    };
    let server = ServerProcess::start(&data).unwrap();
    let (sched, n) = count_backups(&server.base);
    assert_eq!(
        sched["incremental"],
        json!(expr),
        "the schedule survived the restart"
    );
    assert_eq!(n, 1, "the missed run happened once");
    drop(server);
    let server = ServerProcess::start(&data).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (_, n) = count_backups(&server.base);
    assert_eq!(n, 1, "and not again at the next start");
}

/// Memories travel with backups: the records in every backup, the index file in fulls; a
/// verification compares the index with the records; a restored server loads the index and
/// catches up with memories added after the full.
#[test]
fn memories_and_their_index_are_backed_up_verified_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let server = ServerProcess::start(&data).unwrap();
    let remember = |c: &awc::Client, b: &str, text: &str| {
        let (c, url) = (c.clone(), format!("{b}/api/memory/records"));
        let text = text.to_string();
        async move {
            let (s, v) = post(&c, url, json!({"items": [{"text": text}]})).await;
            assert_eq!(s, 201, "{v}");
        }
    };
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let b = &server.base;
        remember(
            &c,
            b,
            "Computes the area of a rectangle from its width and height.",
        )
        .await;
        remember(&c, b, "Greets a person by name.").await;
        let (s, m) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
        assert_eq!(s, 201, "{m}");
        assert!(
            m["files"]["memory.usearch"].is_object(),
            "the index is in the full: {m}"
        );
        assert_eq!(m["total_memories"], 2);
        remember(&c, b, "Adds up a list of numbers.").await;
        let (s, m) = post(
            &c,
            format!("{b}/api/backups"),
            json!({"kind": "incremental"}),
        )
        .await;
        assert_eq!(s, 201, "{m}");
        assert_eq!(m["counts"]["memory"], 1, "{m}");
        let id = m["id"].as_str().unwrap();
        let (s, v) = post(&c, format!("{b}/api/backups/{id}/verify"), json!({})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("3 memory records"),
            "{v}"
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("the index holds 2 of 3"),
            "{v}"
        );
    });
    drop(server);
    let restored = dir.path().join("restored");
    let out = cli_restore(&backups, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(&restored).unwrap();
    actix_web::rt::System::new().block_on(async {
        let c = client();
        let b = &server.base;
        let (_, h) = request(&c, "GET", &format!("{b}/api/health"), None).await;
        assert_eq!(h["memory"]["records"], 3, "{h}");
        assert_eq!(h["memory"]["index_at_start"], "loaded", "{h}");
        assert_eq!(
            h["personas"]["embedded_texts"], 0,
            "nothing re-embedded: {h}"
        );
        let (_, hits) = request(
            &c,
            "GET",
            &format!("{b}/api/memory/search?q=sum%20of%20numbers&k=1"),
            None,
        )
        .await;
        assert!(
            hits[0]["text"].as_str().unwrap().contains("Adds up"),
            "{hits}"
        );
    });
}

/// `ops/restore.sh` killed (with everything it started) at many points: every time, the data
/// directory starts, holding the whole world, the old one or the restored one.
#[test]
fn restore_sh_killed_at_any_point_leaves_a_complete_world() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let server = ServerProcess::start(&data).unwrap();
    let sys = actix_web::rt::System::new();
    let count = |base: &str| {
        let base = base.to_string();
        sys.block_on(async move {
            let (_, h) = request(&client(), "GET", &format!("{base}/api/health"), None).await;
            h["objects"].as_u64().unwrap()
        })
    };
    sys.block_on(async {
        let c = client();
        let b = &server.base;
        for i in 0..40 {
            post(
                &c,
                format!("{b}/api/objects/genesis_obj/clone"),
                json!({"slots": {"i": i, "pad": "p".repeat(500)}}),
            )
            .await;
        }
        let (s, _) = post(&c, format!("{b}/api/backups"), json!({"kind": "full"})).await;
        assert_eq!(s, 201);
        for i in 0..10 {
            post(
                &c,
                format!("{b}/api/objects/genesis_obj/clone"),
                json!({"slots": {"later": i}}),
            )
            .await;
        }
    });
    let (restored, old) = (45, 55);
    assert_eq!(count(&server.base), old);
    drop(server);
    for delay_ms in [0u64, 30, 80, 150, 250, 400, 600, 900, 1300, 2000, 4000] {
        let mut restore = Command::new("ops/restore.sh");
        restore
            .env("TELOS_BIN", env!("CARGO_BIN_EXE_telos"))
            .env("TELOS_DATA_DIR", &data)
            .env("TELOS_BACKUP_DIR", &backups)
            .env("TELOS_LOG", "warn")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let mut child = restore.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signals the process group the child leads (the script and what it started).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        let server = ServerProcess::start(&data).unwrap_or_else(|e| {
            panic!("killed after {delay_ms} ms: the world does not start: {e}")
        });
        let n = count(&server.base);
        assert!(
            n == old || n == restored,
            "killed after {delay_ms} ms: {n} objects, neither the old world ({old}) nor the restored one ({restored})"
        );
        drop(server);
    }
}

#[actix_web::test]
async fn a_backup_and_a_verification_stream_their_progress_to_watchers_of_backup_manager() {
    let app = spawn_app().await;
    make_objects(&app, &[1000, 1000, 500]).await;
    let mut ws = app.ws().await;
    ws.send_json(json!({"type": "subscribe", "target": "backup_manager"}))
        .await;
    ws.until(|f| f["type"] == "subscribed").await;

    let c = client();
    let (s, m) = post(
        &c,
        format!("{}/api/backups", app.base),
        json!({"kind": "full"}),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let frames = ws
        .until(|f| f["type"] == "progress" && f["state"] != "running")
        .await;
    let progress: Vec<&Json> = frames.iter().filter(|f| f["type"] == "progress").collect();
    assert!(
        progress
            .iter()
            .all(|f| f["kind"] == "backup" && f["target"] == "backup_manager")
    );
    let last = progress.last().unwrap();
    assert_eq!(last["state"], "done", "{last}");
    // The objects phase counts up to every object written (the maker and its clones, plus the
    // world's own); steps between go out at most every 100 ms.
    let objects: Vec<(u64, u64)> = progress
        .iter()
        .filter(|f| f["phase"] == "objects")
        .map(|f| (f["done"].as_u64().unwrap(), f["total"].as_u64().unwrap()))
        .collect();
    assert!(objects.len() >= 2, "{progress:?}");
    assert!(objects.windows(2).all(|w| w[0].0 <= w[1].0), "{objects:?}");
    let (done, total) = *objects.last().unwrap();
    assert!(done == total && total >= 2501, "{objects:?}");
    // The read before them says so: no measure while it runs, every object once read.
    let read: Vec<(u64, u64)> = progress
        .iter()
        .filter(|f| f["phase"] == "read objects")
        .map(|f| (f["done"].as_u64().unwrap(), f["total"].as_u64().unwrap()))
        .collect();
    assert_eq!(read.first(), Some(&(0, 0)), "{progress:?}");
    assert_eq!(read.last(), Some(&(total, total)), "{progress:?}");
    let (_, jobs) = app.get("/api/jobs").await;
    assert_eq!(jobs, json!([]));

    // A verification restores into a scratch database: its progress counts the rows restored.
    let id = m["id"].as_str().unwrap();
    let (s, v) = post(
        &c,
        format!("{}/api/backups/{id}/verify", app.base),
        json!({}),
    )
    .await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let frames = ws
        .until(|f| f["type"] == "progress" && f["state"] != "running")
        .await;
    let restored: Vec<&Json> = frames
        .iter()
        .filter(|f| f["kind"] == "verify" && f["phase"] == "restore object")
        .collect();
    assert!(!restored.is_empty(), "{frames:?}");
    assert_eq!(
        restored.last().unwrap()["done"],
        restored.last().unwrap()["total"]
    );

    // While a backup job runs, `GET /api/backups` lists it first; when it ends, no more.
    let running = app.telos.jobs.begin("backup", "backup_manager");
    running.update("read objects", 10, 20);
    let (s, list) = app.get("/api/backups").await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["state"], "running", "{list}");
    assert_eq!(list[0]["job"]["kind"], "backup");
    assert_eq!(list[0]["job"]["phase"], "read objects");
    assert_eq!(
        (&list[0]["job"]["done"], &list[0]["job"]["total"]),
        (&json!(10), &json!(20))
    );
    assert_eq!(
        list[1]["id"], m["id"],
        "the backup on disk comes after: {list}"
    );
    running.finish(true);
    let (_, list) = app.get("/api/backups").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|row| row["state"].is_null()),
        "{list}"
    );
    assert_eq!(list[0]["id"], m["id"]);
}

#[actix_web::test]
async fn the_cli_backs_up_a_running_server_and_prints_each_phase_off_a_terminal() {
    let app = spawn_app().await;
    make_objects(&app, &[1000, 1000, 1000]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_telos"))
        .args(["backup", "--full", "--server", &app.base])
        .env("TELOS_LOG", "warn")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("(full)"), "{stdout}");
    let (_, list) = app.get("/api/backups").await;
    assert!(
        stdout.contains(list[0]["id"].as_str().unwrap()),
        "{stdout} {list}"
    );
    // Stderr is not a terminal here: the progress (from the WebSocket's `progress` frames,
    // which carry every phase change and the end) comes as a line as each phase starts and
    // one as it completes.
    let objects = list[0]["total_objects"].as_u64().unwrap();
    assert!(objects > 3000, "{list}");
    for line in [
        "backup: read objects 0/0".to_string(),
        format!("backup: read objects {objects}/{objects}"),
        format!("backup: objects 0/{objects}"),
        format!("backup: objects {objects}/{objects}"),
    ] {
        assert!(stderr.lines().any(|l| l == line), "{line:?} in {stderr}");
    }
    let phases: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("backup: "))
        .collect();
    let at = |line: &str| phases.iter().position(|l| l.starts_with(line)).unwrap();
    assert!(
        at("backup: read objects") < at("backup: objects"),
        "{stderr}"
    );

    app.assert_counted(&[
        "telos_backups_total{kind=\"full\",outcome=\"ok\"}",
        "telos_backup_duration_seconds_count{kind=\"full\"}",
        // The CLI's subscription.
        "telos_ws_frames_total{direction=\"in\"}",
        "telos_ws_frames_total{direction=\"out\"}",
    ])
    .await;
}
