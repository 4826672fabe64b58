//! The file store against a hostile directory, damaged files and crashes.
#![allow(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::fs::{temp_name, temp_prefix};
use super::recover::{parse_state, StateFile};
use super::sealing::Codec;
use super::*;

fn token(n: u64) -> StoredToken {
    StoredToken {
        access_token: format!("at{n}"),
        refresh_token: Some(format!("rt{n}")),
        expires_at: 1_000 + n,
        expires_at_ms: None,
        obtained_at_ms: n,
        organizer_key: None,
        account_key: None,
        principal: None,
        version: 0,
    }
}

/// Saves `t` over whatever `credential` holds (renewed from the stored version), as
/// every writer that read the store first does.
async fn put(store: &impl TokenStore, credential: &str, t: StoredToken) {
    let version = store.load(credential).await.unwrap().map_or(0, |s| s.version);
    let saved = store.save(credential, &StoredToken { version, ..t }).await.unwrap();
    assert!(matches!(saved, Saved::Stored(v) if v == next_version(version)), "{saved:?}");
}

/// The stored token of `credential`, its version left out (compared on their own).
async fn got(store: &impl TokenStore, credential: &str) -> Option<StoredToken> {
    store.load(credential).await.unwrap().map(|t| StoredToken { version: 0, ..t })
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A victim file outside the state directory, 0644, that no write may touch.
fn victim() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("victim");
    std::fs::write(&p, "victim").unwrap();
    chmod(&p, 0o644);
    (dir, p)
}

fn assert_untouched(victim: &Path) {
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "victim");
    assert_eq!(mode(victim), 0o644);
}

#[tokio::test]
async fn round_trip_merges_credentials_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/deeper/state.json");
    let store = FileStore::open(&path).unwrap();
    assert_eq!(got(&store, "a").await, None);
    put(&store, "a", token(1)).await;
    put(&store, "b", token(2)).await;
    put(&store, "a", token(3)).await;
    assert_eq!(got(&store, "a").await, Some(token(3)));
    assert_eq!(got(&store, "b").await, Some(token(2)));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("sub")), 0o700, "created directories are private");
    assert_eq!(mode(&dir.path().join("sub/deeper")), 0o700);
    assert_eq!(names_in(path.parent().unwrap()), ["state.json", "state.json.lock"], "no temp file left");
    assert_eq!(mode(&path.parent().unwrap().join("state.json.lock")), 0o600);
}

#[test]
fn temp_names_are_hidden_and_unpredictable() {
    let prefix = temp_prefix(Path::new("/x/state.json")).unwrap();
    assert_eq!(prefix, ".state.json.tmp.");
    let names: BTreeSet<OsString> = (0..100).map(|_| temp_name(&prefix)).collect();
    assert_eq!(names.len(), 100);
    for n in &names {
        let n = n.to_str().unwrap();
        let hex = n.strip_prefix(".state.json.tmp.").unwrap();
        assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{n}");
    }
}

#[tokio::test]
async fn planted_symlinks_are_never_followed() {
    let (_v, victim) = victim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    // The old predictable temp names, a would-be temp name and a would-be copy.
    for name in [
        format!("state.tmp.{}", std::process::id()),
        format!("state.json.tmp.{}", std::process::id()),
        ".state.json.tmp.0000000000000000".to_string(),
    ] {
        symlink(&victim, dir.path().join(name)).unwrap();
    }
    let store = FileStore::open(&path).unwrap();
    put(&store, "a", token(1)).await;
    put(&store, "a", token(2)).await;
    assert_untouched(&victim);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(got(&store, "a").await, Some(token(2)));
    // The would-be temp name was cleaned up as a leftover (the link, not its target).
    assert!(!names_in(dir.path()).iter().any(|n| n.starts_with(".state.json.tmp.")));
}

#[tokio::test]
async fn a_symlink_at_the_lock_or_the_state_path_fails_the_write() {
    let (_v, victim) = victim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    symlink(&victim, dir.path().join("state.json.lock")).unwrap();
    let store = FileStore::new(&path);
    let e = store.save("a", &token(1)).await.unwrap_err();
    assert!(e.to_string().contains("state.json.lock"), "{e}");
    assert_untouched(&victim);
    std::fs::remove_file(dir.path().join("state.json.lock")).unwrap();

    symlink(&victim, &path).unwrap();
    assert!(matches!(store.save("a", &token(1)).await, Err(StoreError::SymlinkedState { .. })));
    assert!(matches!(store.load("a").await, Err(StoreError::SymlinkedState { .. })));
    assert_untouched(&victim);
    assert!(!names_in(dir.path()).iter().any(|n| n.contains("tmp")));
}

#[test]
fn open_refuses_a_symlinked_state_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    std::fs::write(&real, "{}").unwrap();
    let link = dir.path().join("state.json");
    symlink(&real, &link).unwrap();
    let e = FileStore::open(&link).err().unwrap();
    assert!(matches!(e, StoreError::SymlinkedState { .. }));
    let msg = e.to_string();
    assert!(msg.contains(&link.display().to_string()) && msg.contains("real file"), "{msg}");
    // A dangling link too: it would be written through, or replaced, either way wrong.
    std::fs::remove_file(&real).unwrap();
    assert!(matches!(FileStore::open(&link), Err(StoreError::SymlinkedState { .. })));
    // And a directory where the file should be.
    assert!(matches!(FileStore::open(dir.path()), Err(StoreError::NotAFile { .. })));
}

#[tokio::test]
async fn a_directory_others_can_write_to_is_refused_naming_it() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("state.json");
    for bad in [0o777, 0o1777, 0o770, 0o703, 0o1733] {
        chmod(&dir, bad);
        let e = FileStore::open(&path).err().unwrap_or_else(|| panic!("mode {bad:o} accepted"));
        assert!(matches!(e, StoreError::UnsafeDir { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&dir.display().to_string()) && msg.contains("chmod go-w"), "{msg}");
        // Writes refuse it too, whoever made the store.
        assert!(matches!(FileStore::new(&path).save("a", &token(1)).await, Err(StoreError::UnsafeDir { .. })));
        assert!(!path.exists());
    }
    for good in [0o700, 0o755, 0o750, 0o705] {
        chmod(&dir, good);
        FileStore::open(&path).unwrap_or_else(|e| panic!("mode {good:o} refused: {e}"));
    }
    // A directory that does not exist yet is created private.
    let fresh = base.path().join("new/state.json");
    FileStore::open(&fresh).unwrap().save("a", &token(1)).await.unwrap();
    assert_eq!(mode(&base.path().join("new")), 0o700);
}

/// A real two-record file, with strings that look like structure.
fn two_records() -> (Vec<u8>, StoredToken, StoredToken) {
    let mut a = token(1);
    a.access_token = "a}\"{,:\\u0041 ".into();
    a.organizer_key = Some("}}".into());
    let mut b = token(2);
    b.account_key = Some("{\"x\":1}".into());
    b.expires_at_ms = Some(u64::MAX);
    let state = StateFile { version: 1, credentials: [("a".into(), a.clone()), ("b".into(), b.clone())].into() };
    (serde_json::to_vec_pretty(&state).unwrap(), a, b)
}

#[test]
fn a_file_cut_anywhere_keeps_every_record_complete_before_the_cut() {
    let (bytes, a, b) = two_records();
    let text = std::str::from_utf8(&bytes).unwrap();
    let b_key = text.find("\"b\":").unwrap();
    let a_end = text[..b_key].rfind('}').unwrap() + 1;
    for cut in 0..=bytes.len() {
        let c = parse_state(&bytes[..cut]);
        if let Some(got) = c.records.get("a") {
            assert_eq!(got, &a, "cut at {cut}");
        }
        if let Some(got) = c.records.get("b") {
            assert_eq!(got, &b, "cut at {cut}");
        }
        assert!(c.records.len() <= 2 && c.malformed.is_empty(), "cut at {cut}: {c:?}");
        if cut >= a_end {
            assert!(c.records.contains_key("a"), "cut at {cut}: record a is complete");
        }
        if cut == 0 || cut == bytes.len() {
            assert!(!c.is_damaged(), "cut at {cut}");
        } else {
            assert!(c.is_damaged(), "cut at {cut}: a cut file is damaged");
        }
    }
    assert_eq!(parse_state(&bytes).records.len(), 2);
}

#[test]
fn garbage_anywhere_never_panics_nor_costs_the_records_before_it() {
    let (bytes, a, _) = two_records();
    let text = std::str::from_utf8(&bytes).unwrap();
    let a_end = text[..text.find("\"b\":").unwrap()].rfind('}').unwrap() + 1;
    for at in 0..bytes.len() {
        for junk in [b'\0', b'"', b'}', b'{', b',', b':', b'x', b'9', 0xff] {
            let mut v = bytes.clone();
            v[at] = junk;
            let c = parse_state(&v);
            if at >= a_end {
                assert_eq!(c.records.get("a"), Some(&a), "{junk} at {at}: {c:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_malformed_record_is_skipped_and_kept_aside_in_numbered_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::open(&path).unwrap();
    put(&store, "a", token(1)).await;
    put(&store, "b", token(2)).await;
    let damage = |p: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["credentials"]["b"] = serde_json::json!({"access_token": 5, "expires_at": 1e20});
        let bytes = serde_json::to_vec_pretty(&v).unwrap();
        std::fs::write(p, &bytes).unwrap();
        bytes
    };
    let first = damage(&path);
    assert_eq!(got(&store, "a").await, Some(token(1)), "another record's damage costs nothing");
    assert_eq!(got(&store, "b").await, None, "the damaged credential starts with no token");
    assert!(!dir.path().join("state.json.damaged.1").exists(), "reading never writes");

    put(&store, "c", token(3)).await;
    let copy1 = dir.path().join("state.json.damaged.1");
    assert_eq!(std::fs::read(&copy1).unwrap(), first);
    assert_eq!(mode(&copy1), 0o600);
    assert_eq!(got(&store, "a").await, Some(token(1)));
    assert_eq!(got(&store, "b").await, None);
    assert_eq!(got(&store, "c").await, Some(token(3)));
    let c = parse_state(&std::fs::read(&path).unwrap());
    assert!(!c.is_damaged(), "the rewritten file is clean");

    // No copy while the file is clean; the next damage goes to .2, .1 stays.
    put(&store, "c", token(4)).await;
    assert!(!dir.path().join("state.json.damaged.2").exists());
    put(&store, "b", token(5)).await;
    let second = damage(&path);
    // A link planted at the next free name is skipped, not followed.
    let (_v, victim) = victim();
    symlink(&victim, dir.path().join("state.json.damaged.2")).unwrap();
    put(&store, "a", token(6)).await;
    assert_untouched(&victim);
    assert_eq!(std::fs::read(&copy1).unwrap(), first, ".1 is never overwritten");
    assert_eq!(std::fs::read(dir.path().join("state.json.damaged.3")).unwrap(), second);
    assert_eq!(got(&store, "a").await, Some(token(6)));
    assert_eq!(got(&store, "c").await, Some(token(4)));
}

#[tokio::test]
async fn an_unreadable_file_is_no_token_then_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{not json").unwrap();
    let store = FileStore::open(&path).unwrap();
    assert_eq!(got(&store, "a").await, None);
    put(&store, "a", token(1)).await;
    assert_eq!(std::fs::read(dir.path().join("state.json.damaged.1")).unwrap(), b"{not json");
    assert_eq!(got(&store, "a").await, Some(token(1)));

    // An empty file is no state at all, not damage.
    std::fs::write(&path, "").unwrap();
    assert_eq!(got(&store, "a").await, None);
    put(&store, "a", token(2)).await;
    assert!(!dir.path().join("state.json.damaged.2").exists());
}

#[tokio::test]
async fn leftover_temp_files_are_removed_at_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let left = dir.path().join(".state.json.tmp.0123456789abcdef");
    std::fs::write(&left, "tokens of a crashed write").unwrap();
    let other = dir.path().join(".other.json.tmp.0123456789abcdef");
    std::fs::write(&other, "not ours").unwrap();
    FileStore::open(&path).unwrap().save("a", &token(1)).await.unwrap();
    assert!(!left.exists());
    assert!(other.exists());
}

/// Log lines written while `f` runs on this thread.
fn captured_log(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn damage_is_an_error_once_per_credential_until_a_clean_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let reported = Mutex::new(BTreeSet::new());
    let codec = Codec::default();
    let damaged = r#"{"version":1,"credentials":{"a":{"access_token":"x","expires_at":1,"obtained_at_ms":0},"b":[]}}"#;
    std::fs::write(&path, damaged).unwrap();
    let log = captured_log(|| {
        for _ in 0..3 {
            assert_eq!(FileStore::load_blocking(&path, "b", &reported, &codec).unwrap(), None);
            assert!(FileStore::load_blocking(&path, "a", &reported, &codec).unwrap().is_some());
        }
    });
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("credential=\"b\"") && errors[0].contains("state.json"), "{log}");

    let log = captured_log(|| {
        FileStore::save_blocking(&path, "c", &token(3), &reported, &codec).unwrap();
    });
    assert!(log.contains("ERROR") && log.contains("state.json.damaged.1"), "the copy is named: {log}");
    std::fs::write(&path, damaged).unwrap();
    let log = captured_log(|| assert_eq!(FileStore::load_blocking(&path, "b", &reported, &codec).unwrap(), None));
    assert_eq!(log.lines().filter(|l| l.contains("ERROR")).count(), 1, "new damage, new error: {log}");
}

#[test]
fn extreme_numbers_parse_and_never_panic() {
    let max = u64::MAX;
    let text = format!(
        r#"{{"version":1,"credentials":{{
            "ms":{{"access_token":"x","expires_at":{max},"expires_at_ms":{max},"obtained_at_ms":{max}}},
            "s":{{"access_token":"y","expires_at":{max},"obtained_at_ms":0}},
            "big":{{"access_token":"z","expires_at":1e400,"obtained_at_ms":0}},
            "neg":{{"access_token":"z","expires_at":-1,"obtained_at_ms":0}},
            "ok":{{"access_token":"w","expires_at":5,"obtained_at_ms":0}}}}}}"#
    );
    let c = parse_state(text.as_bytes());
    assert_eq!(c.records.keys().collect::<Vec<_>>(), ["ms", "ok", "s"]);
    assert_eq!(c.malformed.iter().collect::<Vec<_>>(), ["big", "neg"]);
    assert!(c.unreadable.is_none());
    assert_eq!(c.records["s"].expires_at_time(), UNIX_EPOCH, "not a time: expired");
    let _ = c.records["ms"].expires_at_time();
    assert_eq!(c.records["ok"].expires_at_time(), UNIX_EPOCH + Duration::from_secs(5));
}

#[test]
fn stored_token_keeps_its_field_names() {
    let mut t = token(1);
    t.expires_at_ms = Some(7);
    t.organizer_key = Some("o".into());
    t.account_key = Some("k".into());
    let v = serde_json::to_value(&t).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "account_key",
            "expires_at",
            "expires_at_ms",
            "obtained_at_ms",
            "organizer_key",
            "refresh_token",
            "version"
        ]
    );
}

#[test]
fn debug_redacts() {
    let s = format!("{:?}", token(7));
    assert!(!s.contains("at7") && !s.contains("rt7"));
}

// ===== sealed records (state.encryption_keys) =====

fn sealer(bytes: &[&[u8; 1]]) -> Option<Arc<crate::token::seal::Sealer>> {
    use base64::Engine;
    let keys: Vec<crate::secret::Secret> = bytes
        .iter()
        .map(|b| crate::secret::Secret::new(base64::engine::general_purpose::STANDARD.encode([b[0]; 32])))
        .collect();
    Some(Arc::new(crate::token::seal::Sealer::new(&keys).unwrap()))
}

fn sealed_store(path: &Path, keys: &[&[u8; 1]]) -> FileStore {
    FileStore::open(path).unwrap().with_sealer(sealer(keys))
}

fn kids_in(path: &Path) -> Vec<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["credentials"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r.get("kid").and_then(|k| k.as_str()).map(Into::into))
        .collect()
}

#[tokio::test]
async fn sealed_records_hold_no_token_and_open_with_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = sealed_store(&path, &[b"1"]);
    put(&store, "a", token(1)).await;
    put(&store, "b", token(2)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"at1\"") && !text.contains("\"rt1\"") && !text.contains("access_token"), "{text}");
    let kid = store.key_id("a").unwrap();
    assert_eq!(kids_in(&path), [Some(kid.clone()), Some(kid.clone())]);
    // Rotated: [2, 1] opens it, and prepare re-seals with 2.
    let rotated = sealed_store(&path, &[b"2", b"1"]);
    assert_eq!(got(&rotated, "a").await, Some(token(1)));
    assert_eq!(rotated.key_id("a"), Some(kid.clone()));
    rotated.prepare(&[]).await.unwrap();
    let new_kid = rotated.key_id("a").unwrap();
    assert_ne!(new_kid, kid);
    assert_eq!(kids_in(&path), [Some(new_kid.clone()), Some(new_kid)]);
    assert_eq!(got(&sealed_store(&path, &[b"2"]), "b").await, Some(token(2)));
}

#[tokio::test]
async fn plaintext_is_sealed_at_prepare_and_a_wrong_or_missing_key_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let plain = FileStore::open(&path).unwrap();
    put(&plain, "a", token(1)).await;
    plain.prepare(&[]).await.unwrap();
    assert_eq!(kids_in(&path), [None]);
    let store = sealed_store(&path, &[b"1"]);
    store.prepare(&[]).await.unwrap();
    assert!(kids_in(&path)[0].is_some());
    let before = std::fs::read(&path).unwrap();

    let e = sealed_store(&path, &[b"9"]).prepare(&[]).await.unwrap_err();
    assert!(matches!(e, StoreError::Keys { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("\"a\"") && msg.contains(&store.key_id("a").unwrap()), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let e = FileStore::open(&path).unwrap().prepare(&[]).await.unwrap_err();
    assert!(e.to_string().contains("keep a key configured"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(names_in(dir.path()), ["state.json", "state.json.lock"]);
}

#[tokio::test]
async fn a_tampered_or_moved_record_is_a_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = sealed_store(&path, &[b"1"]);
    put(&store, "a", token(1)).await;
    put(&store, "b", token(2)).await;
    put(&store, "c", token(3)).await;
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["credentials"]["b"] = v["credentials"]["a"].clone();
    let ct = v["credentials"]["c"]["ct"].as_str().unwrap().to_string();
    let mut bytes = ct.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    v["credentials"]["c"]["ct"] = String::from_utf8(bytes).unwrap().into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();

    let store = sealed_store(&path, &[b"1"]);
    store.prepare(&[]).await.unwrap();
    assert_eq!(got(&store, "a").await, Some(token(1)));
    assert_eq!(got(&store, "b").await, None, "a record moved from a to b does not open");
    assert_eq!(got(&store, "c").await, None, "a flipped byte does not open");
    put(&store, "c", token(4)).await;
    assert!(dir.path().join("state.json.damaged.1").exists());
    assert_eq!(got(&store, "c").await, Some(token(4)));
    assert_eq!(got(&store, "a").await, Some(token(1)));
}

// ===== versions, not clocks =====

/// A record "obtained" thousands of years ahead, as a replica with a wild clock (or an
/// attacker) would write it.
const FAR_FUTURE_MS: u64 = 99_999_999_999_999_999;

fn write_state(path: &Path, credentials: serde_json::Value) {
    std::fs::write(path, serde_json::json!({"version": 1, "credentials": credentials}).to_string()).unwrap();
}

#[tokio::test]
async fn a_save_counts_over_the_version_it_renewed_never_over_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut planted = serde_json::to_value(token(1)).unwrap();
    planted["obtained_at_ms"] = FAR_FUTURE_MS.into();
    planted["version"] = 5.into();
    write_state(&path, serde_json::json!({ "a": planted }));
    let store = FileStore::open(&path).unwrap();
    let held = store.load("a").await.unwrap().unwrap();
    assert_eq!((held.version, held.obtained_at_ms), (5, FAR_FUTURE_MS));

    // Renewed from version 5, obtained "now" by a sane clock: stored as 6.
    let renewed = StoredToken { version: 5, ..token(2) };
    assert_eq!(store.save("a", &renewed).await.unwrap(), Saved::Stored(6));
    assert_eq!(store.load("a").await.unwrap(), Some(StoredToken { version: 6, ..token(2) }));
    // Another writer that also renewed from 5, however new its timestamp: refused, and
    // told what is stored (to take it up).
    let late = StoredToken { version: 5, obtained_at_ms: FAR_FUTURE_MS, ..token(3) };
    assert_eq!(
        store.save("a", &late).await.unwrap(),
        Saved::Stale { current: Some(StoredToken { version: 6, ..token(2) }), version: 6 }
    );
    assert_eq!(got(&store, "a").await, Some(token(2)), "the refused save wrote nothing");
    // And saves keep counting after it: none is refused for a timestamp.
    for n in 7..10 {
        assert_eq!(store.save("a", &StoredToken { version: n - 1, ..token(n) }).await.unwrap(), Saved::Stored(n));
    }
}

#[tokio::test]
async fn two_writers_of_one_file_never_undo_each_other() {
    // The running proxy and a `login` in another process: two stores on one file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let proxy = FileStore::open(&path).unwrap();
    let login = FileStore::open(&path).unwrap();
    assert_eq!(proxy.save("a", &token(1)).await.unwrap(), Saved::Stored(1));
    let held = proxy.load("a").await.unwrap().unwrap();
    // The person signs in (over version 1), with a clock ten minutes slow.
    let signed_in = StoredToken { version: 1, obtained_at_ms: 0, ..token(2) };
    assert_eq!(login.save("a", &signed_in).await.unwrap(), Saved::Stored(2));
    // The proxy's renewal of what it held (version 1) must not undo the sign-in.
    let renewal = StoredToken { version: held.version, obtained_at_ms: 1_000, ..token(3) };
    match proxy.save("a", &renewal).await.unwrap() {
        Saved::Stale { current: Some(current), version: 2 } => assert_eq!(current.access_token, "at2"),
        other => panic!("a stale renewal was not refused: {other:?}"),
    }
    assert_eq!(got(&login, "a").await, Some(StoredToken { obtained_at_ms: 0, ..token(2) }));
}

#[tokio::test]
async fn versions_no_writer_could_have_given_read_as_zero_and_counting_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::open(&path).unwrap();
    for odd in [
        serde_json::json!(99_999_999_999_999_999u64),
        serde_json::json!(u64::MAX),
        serde_json::json!(-1),
        serde_json::json!(1.5),
        serde_json::json!("7"),
        serde_json::json!(null),
    ] {
        let mut planted = serde_json::to_value(token(1)).unwrap();
        planted["version"] = odd.clone();
        write_state(&path, serde_json::json!({ "a": planted }));
        assert_eq!(store.load("a").await.unwrap().unwrap().version, 0, "{odd}");
        assert_eq!(store.save("a", &token(2)).await.unwrap(), Saved::Stored(1), "{odd}");
    }
    // The largest version is followed by 1, not by an overflow or a refusal.
    let mut planted = serde_json::to_value(token(1)).unwrap();
    planted["version"] = MAX_VERSION.into();
    write_state(&path, serde_json::json!({ "a": planted }));
    assert_eq!(store.save("a", &StoredToken { version: MAX_VERSION, ..token(2) }).await.unwrap(), Saved::Stored(1));
}

#[test]
fn a_plaintext_record_read_under_keys_is_warned_about_and_sealed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut plain = serde_json::to_value(token(1)).unwrap();
    plain["version"] = 3.into();
    write_state(&path, serde_json::json!({ "planted": plain }));
    let reported = Mutex::new(BTreeSet::new());
    let codec = Codec::new(sealer(&[b"1"]));
    let mut loaded = None;
    let log = captured_log(|| loaded = FileStore::load_blocking(&path, "planted", &reported, &codec).unwrap());
    assert_eq!(loaded, Some(StoredToken { version: 3, ..token(1) }), "read (and served)");
    let warning = log.lines().find(|l| l.contains("WARN")).unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains("credential=\"planted\"")
            && warning.contains("plaintext record")
            && warning.contains("re-sealed"),
        "{warning}"
    );
    assert!(!log.contains("at1") && !log.contains("rt1"), "a token in the log: {log}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"at1\"") && !text.contains("access_token"), "not sealed: {text}");
    assert_eq!(kids_in(&path), [codec.current_kid()]);
    // Same version: sealing changed no token.
    assert_eq!(FileStore::load_blocking(&path, "planted", &reported, &codec).unwrap().unwrap().version, 3);
}

#[tokio::test]
async fn a_state_file_from_before_versions_is_read_and_upgraded_at_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    // As written before records had a version.
    std::fs::write(
        &path,
        r#"{"version":1,"credentials":{"a":{"access_token":"at1","refresh_token":"rt1","expires_at":1001,"obtained_at_ms":1},
            "b":{"access_token":"at2","refresh_token":"rt2","expires_at":1002,"obtained_at_ms":2}}}"#,
    )
    .unwrap();
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.load("a").await.unwrap(), Some(token(1)), "read, as version 0");
    assert_eq!(store.save("a", &token(3)).await.unwrap(), Saved::Stored(1));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["credentials"]["a"]["version"], 1, "{v}");
    assert_eq!(store.load("b").await.unwrap(), Some(token(2)), "the other record is kept as it was");
}

// ===== account records: one file each =====

/// `<dir>/state.json.accounts/<credential>`.
fn account_dir(path: &Path, credential: &str) -> PathBuf {
    PathBuf::from(format!("{}.accounts/{credential}", path.display()))
}

#[tokio::test]
async fn account_records_round_trip_list_and_remove_each_in_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.accounts("goto").await.unwrap(), Vec::<String>::new());
    put(&store, "goto", token(1)).await;
    put(&store, "goto/bob", token(2)).await;
    put(&store, "goto/alice", token(3)).await;
    put(&store, "other/alice", token(4)).await;
    put(&store, "goto/bob", token(5)).await;
    assert_eq!(got(&store, "goto").await, Some(token(1)));
    assert_eq!(got(&store, "goto/alice").await, Some(token(3)));
    assert_eq!(got(&store, "goto/bob").await, Some(token(5)));
    assert_eq!(got(&store, "other/alice").await, Some(token(4)));
    assert_eq!(got(&store, "goto/carol").await, None);
    assert_eq!(store.accounts("goto").await.unwrap(), ["alice", "bob"]);
    assert_eq!(store.accounts("other").await.unwrap(), ["alice"]);
    assert_eq!(store.accounts("nobody").await.unwrap(), Vec::<String>::new());

    // The state file holds the credential's own record only.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["credentials"].as_object().unwrap().keys().collect::<Vec<_>>(), ["goto"]);
    let accounts = dir.path().join("state.json.accounts");
    let goto = account_dir(&path, "goto");
    assert_eq!(names_in(&goto), [".lock", "alice.json", "bob.json"], "no temp file left");
    assert_eq!((mode(&accounts), mode(&goto)), (0o700, 0o700));
    assert_eq!((mode(&goto.join("bob.json")), mode(&goto.join(".lock"))), (0o600, 0o600));
    let record: StoredToken = serde_json::from_slice(&std::fs::read(goto.join("bob.json")).unwrap()).unwrap();
    assert_eq!(record, StoredToken { version: 2, ..token(5) });

    store.remove("goto/bob").await.unwrap();
    store.remove("goto/bob").await.unwrap();
    store.remove("goto/never").await.unwrap();
    store.remove("never/never").await.unwrap();
    assert_eq!(got(&store, "goto/bob").await, None);
    assert_eq!(store.accounts("goto").await.unwrap(), ["alice"]);
    // Saved again from nothing, it starts over at version 1.
    assert_eq!(store.save("goto/bob", &token(6)).await.unwrap(), Saved::Stored(1));
    // A credential's own record can be removed too; the others stay.
    store.remove("goto").await.unwrap();
    assert_eq!(got(&store, "goto").await, None);
    assert_eq!(got(&store, "goto/alice").await, Some(token(3)));
    store.remove("goto").await.unwrap();
}

#[tokio::test]
async fn account_keys_that_break_the_name_rule_touch_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::open(&path).unwrap();
    for key in ["goto/..", "../x", "goto/a/b", "goto/", "/a", "goto/a b", ".../."] {
        assert!(store.save(key, &token(1)).await.is_err(), "{key}");
        assert!(store.load(key).await.is_err(), "{key}");
        assert!(store.remove(key).await.is_err(), "{key}");
    }
    assert_eq!(names_in(dir.path()), Vec::<String>::new());
    assert_eq!(store.accounts("..").await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn an_account_save_counts_over_its_own_record_s_version() {
    // The running proxy and a `login` in another process, each a store on one path.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let proxy = FileStore::open(&path).unwrap();
    let login = FileStore::open(&path).unwrap();
    assert_eq!(proxy.save("goto/alice", &token(1)).await.unwrap(), Saved::Stored(1));
    assert_eq!(proxy.save("goto/bob", &token(1)).await.unwrap(), Saved::Stored(1));
    // alice signs in again (over version 1).
    assert_eq!(login.save("goto/alice", &StoredToken { version: 1, ..token(2) }).await.unwrap(), Saved::Stored(2));
    // The proxy's renewal from version 1 is refused for alice, told what is stored...
    assert_eq!(
        proxy.save("goto/alice", &StoredToken { version: 1, ..token(3) }).await.unwrap(),
        Saved::Stale { current: Some(StoredToken { version: 2, ..token(2) }), version: 2 }
    );
    // ...and not for bob, whose record is still at 1: versions are per account.
    assert_eq!(proxy.save("goto/bob", &StoredToken { version: 1, ..token(3) }).await.unwrap(), Saved::Stored(2));
    assert_eq!(got(&login, "goto/alice").await, Some(token(2)));
    // A record that is not there is version 0.
    assert_eq!(
        proxy.save("goto/carol", &StoredToken { version: 4, ..token(3) }).await.unwrap(),
        Saved::Stale { current: None, version: 0 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_and_the_proxy_saving_one_account_at_once_never_lose_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut writers = Vec::new();
    for w in 0..2u64 {
        // A store of its own, as another process has.
        let store = FileStore::open(&path).unwrap().with_sealer(sealer(&[b"1"]));
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..40u64 {
                let id = w * 1000 + n;
                loop {
                    let from = store.load("goto/alice").await.unwrap().map_or(0, |t| t.version);
                    match store.save("goto/alice", &StoredToken { version: from, ..token(id) }).await.unwrap() {
                        Saved::Stored(v) => {
                            acked.push((v, id));
                            break;
                        }
                        Saved::Stale { .. } => continue,
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.sort();
    let versions: BTreeSet<u64> = acked.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions.len(), 80, "two saves were given one version: one undid the other");
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), (1..=80).collect::<Vec<_>>());
    let (newest, id) = *acked.last().unwrap();
    let stored = sealed_store(&path, &[b"1"]).load("goto/alice").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.access_token), (newest, format!("at{id}")));
}

#[tokio::test]
async fn a_sealed_account_record_opens_only_as_its_own_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = sealed_store(&path, &[b"1"]);
    put(&store, "goto/alice", token(1)).await;
    put(&store, "goto/bob", token(2)).await;
    put(&store, "other/alice", token(3)).await;
    let goto = account_dir(&path, "goto");
    let text = std::fs::read_to_string(goto.join("alice.json")).unwrap();
    assert!(!text.contains("\"at1\"") && !text.contains("access_token"), "{text}");
    assert!(store.key_id("goto/alice").is_some());
    // alice's file copied over bob's, and over alice's of another credential.
    std::fs::copy(goto.join("alice.json"), goto.join("bob.json")).unwrap();
    std::fs::copy(goto.join("alice.json"), account_dir(&path, "other").join("alice.json")).unwrap();
    let store = sealed_store(&path, &[b"1"]);
    store.prepare(&[]).await.unwrap();
    assert_eq!(got(&store, "goto/alice").await, Some(token(1)));
    assert_eq!(got(&store, "goto/bob").await, None, "moved to bob: does not open");
    assert_eq!(got(&store, "other/alice").await, None, "moved to another credential: does not open");
    // Written again, the damaged one is kept aside first.
    assert_eq!(store.save("goto/bob", &token(4)).await.unwrap(), Saved::Stored(1));
    assert!(goto.join("bob.json.damaged.1").exists());
    assert_eq!(got(&store, "goto/bob").await, Some(token(4)));
    assert_eq!(store.accounts("goto").await.unwrap(), ["alice", "bob"], "a kept-aside copy is no account");
}

#[tokio::test]
async fn prepare_refuses_a_wrong_key_from_account_records_alone_and_seals_plaintext_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let plain = FileStore::open(&path).unwrap();
    put(&plain, "goto/alice", token(1)).await;
    put(&plain, "goto/bob", token(2)).await;
    let store = sealed_store(&path, &[b"1"]);
    store.prepare(&[]).await.unwrap();
    let goto = account_dir(&path, "goto");
    for a in ["alice", "bob"] {
        let text = std::fs::read_to_string(goto.join(format!("{a}.json"))).unwrap();
        assert!(!text.contains("access_token"), "{a} not sealed at prepare: {text}");
    }
    assert!(!path.exists(), "no credential record: the state file is not created");
    let before: Vec<Vec<u8>> =
        ["alice", "bob"].iter().map(|a| std::fs::read(goto.join(format!("{a}.json"))).unwrap()).collect();

    let e = sealed_store(&path, &[b"9"]).prepare(&[]).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Keys { .. }) && msg.contains("\"goto/alice\""), "{msg}");
    let e = FileStore::open(&path).unwrap().prepare(&[]).await.unwrap_err();
    assert!(e.to_string().contains("keep a key configured"), "{e}");
    let after: Vec<Vec<u8>> =
        ["alice", "bob"].iter().map(|a| std::fs::read(goto.join(format!("{a}.json"))).unwrap()).collect();
    assert_eq!(before, after, "a refused start writes nothing");
    // Rotated: [2, 1] opens them, and prepare seals them with 2, at the same version.
    let rotated = sealed_store(&path, &[b"2", b"1"]);
    rotated.prepare(&[]).await.unwrap();
    assert_eq!(got(&sealed_store(&path, &[b"2"]), "goto/bob").await, Some(token(2)));
    assert_eq!(sealed_store(&path, &[b"2"]).load("goto/bob").await.unwrap().unwrap().version, 1);
}

#[test]
fn a_damaged_account_record_is_no_token_an_error_once_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let reported = Mutex::new(BTreeSet::new());
    let codec = Codec::default();
    FileStore::save_blocking(&path, "goto/alice", &token(1), &reported, &codec).unwrap();
    FileStore::save_blocking(&path, "goto/bob", &token(2), &reported, &codec).unwrap();
    let bob = account_dir(&path, "goto").join("bob.json");
    std::fs::write(&bob, "{\"access_token\": 5").unwrap();
    let log = captured_log(|| {
        for _ in 0..3 {
            assert_eq!(FileStore::load_blocking(&path, "goto/bob", &reported, &codec).unwrap(), None);
            assert!(FileStore::load_blocking(&path, "goto/alice", &reported, &codec).unwrap().is_some());
        }
        // A write of the state file leaves the account's report alone.
        FileStore::save_blocking(&path, "goto", &token(3), &reported, &codec).unwrap();
        assert_eq!(FileStore::load_blocking(&path, "goto/bob", &reported, &codec).unwrap(), None);
    });
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("goto/bob") && errors[0].contains("bob.json"), "{log}");
    assert_eq!(FileStore::save_blocking(&path, "goto/bob", &token(4), &reported, &codec).unwrap(), Saved::Stored(1));
    assert_eq!(std::fs::read_to_string(bob.with_file_name("bob.json.damaged.1")).unwrap(), "{\"access_token\": 5");
    assert_eq!(FileStore::load_blocking(&path, "goto/bob", &reported, &codec).unwrap().unwrap().access_token, "at4");
}

#[tokio::test]
async fn account_directories_are_never_links_nor_writable_by_others_and_leftovers_go_at_prepare() {
    let (_v, victim) = victim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::open(&path).unwrap();
    put(&store, "goto/alice", token(1)).await;
    let goto = account_dir(&path, "goto");
    // A link planted where a credential's directory belongs is refused, not followed.
    symlink(victim.parent().unwrap(), account_dir(&path, "evil")).unwrap();
    assert!(store.save("evil/alice", &token(1)).await.is_err());
    assert_untouched(&victim);
    assert!(!victim.parent().unwrap().join("alice.json").exists());
    // A link at a record is replaced, never written through, and reads as damaged.
    symlink(&victim, goto.join("bob.json")).unwrap();
    assert_eq!(got(&store, "goto/bob").await, None);
    put(&store, "goto/bob", token(2)).await;
    assert_untouched(&victim);
    assert!(std::fs::symlink_metadata(goto.join("bob.json")).unwrap().is_file());
    // A directory others can write to is refused.
    chmod(&goto, 0o777);
    assert!(matches!(store.save("goto/alice", &token(3)).await, Err(StoreError::UnsafeDir { .. })));
    chmod(&goto, 0o700);
    // Temp files of a killed writer go at the next start; records and copies stay.
    for left in [".alice.json.tmp.0123456789abcdef", ".x.json.tmp.0123456789abcdef.json.damaged.1"] {
        std::fs::write(goto.join(left), "tokens of a crashed write").unwrap();
    }
    store.prepare(&[]).await.unwrap();
    assert!(!goto.join(".alice.json.tmp.0123456789abcdef").exists());
    assert!(goto.join(".x.json.tmp.0123456789abcdef.json.damaged.1").exists());
    assert_eq!(got(&store, "goto/alice").await, Some(token(1)));
}

// ===== scale: a renewal costs the same at 100 and at 10,000 accounts =====

/// This thread's I/O counters (`/proc/thread-self/io`): bytes it passed to `write`,
/// its write calls, and bytes it sent (or will send) to the disk.
fn thread_io() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    let field = |name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    (field("wchar:"), field("syscw:"), field("write_bytes:"))
}

/// `accounts` sealed account records of credential `big` under `path` (written directly:
/// the setup is not what is measured), then `saves` renewals of one of them measured.
/// Returns (bytes passed to write, write calls, bytes to disk) per renewal, the time
/// `prepare` takes over them all, and the time of one renewal.
fn renewal_cost(path: &Path, accounts: usize, saves: u64) -> ((u64, u64, u64), Duration, Duration) {
    let codec = Codec::new(sealer(&[b"1"]));
    let reported = Mutex::new(BTreeSet::new());
    // Creates the directories the way the store does.
    FileStore::save_blocking(path, "big/a0", &token(0), &reported, &codec).unwrap();
    let dir = account_dir(path, "big");
    for n in 1..accounts {
        let key = format!("big/a{n}");
        let value = codec.encode(&super::recover::file_aad(&key), &StoredToken { version: 1, ..token(0) }).unwrap();
        std::fs::write(dir.join(format!("a{n}.json")), serde_json::to_vec(&value).unwrap()).unwrap();
    }
    let started = std::time::Instant::now();
    FileStore::prepare_blocking(path, &reported, &codec).unwrap();
    let prepare = started.elapsed();
    let key = format!("big/a{}", accounts / 2);
    let before = thread_io();
    let started = std::time::Instant::now();
    for n in 1..=saves {
        let from = FileStore::load_blocking(path, &key, &reported, &codec).unwrap().unwrap().version;
        let saved = FileStore::save_blocking(path, &key, &StoredToken { version: from, ..token(n) }, &reported, &codec);
        assert!(matches!(saved.unwrap(), Saved::Stored(_)));
    }
    let after = thread_io();
    let each = started.elapsed() / u32::try_from(saves).unwrap();
    let per = |a: u64, b: u64| (a - b) / saves;
    ((per(after.0, before.0), per(after.1, before.1), per(after.2, before.2)), prepare, each)
}

#[test]
fn a_renewal_of_one_account_writes_the_same_at_100_and_at_10000_accounts() {
    // On the disk the state lives on in practice (tmpfs counts no disk bytes).
    // (`target/` beside the sources: it exists unless CARGO_TARGET_DIR points elsewhere.)
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    let small_dir = tempfile::tempdir_in(&base).unwrap();
    let big_dir = tempfile::tempdir_in(&base).unwrap();
    let (small, small_prepare, small_each) = renewal_cost(&small_dir.path().join("state.json"), 100, 20);
    let (big, big_prepare, big_each) = renewal_cost(&big_dir.path().join("state.json"), 10_000, 20);
    println!(
        "per account renewal (write bytes, write calls, disk bytes): 100 accounts {small:?} in {small_each:?}, \
         10000 accounts {big:?} in {big_each:?}; prepare: 100 accounts {small_prepare:?}, 10000 accounts {big_prepare:?}"
    );
    assert_eq!((small.0, small.1), (big.0, big.1), "bytes and calls to write do not depend on the number of accounts");
    assert!(big.2 <= small.2 + 4096, "disk bytes: {small:?} vs {big:?}");
    assert!(big.0 < 2048, "one small record written: {big:?}");
    assert!(big_prepare < Duration::from_secs(10), "start-up over 10,000 account records: {big_prepare:?}");
}

#[tokio::test]
async fn a_linked_or_shared_account_records_directory_is_refused_at_open_and_never_written_through() {
    let (_v, victim) = victim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let root = dir.path().join("state.json.accounts");
    symlink(victim.parent().unwrap(), &root).unwrap();
    assert!(FileStore::open(&path).is_err(), "a link where account records live is refused at start");
    assert!(FileStore::new(&path).save("goto/alice", &token(1)).await.is_err());
    assert!(!victim.parent().unwrap().join("goto").exists(), "nothing created through the link");
    assert_untouched(&victim);
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    chmod(&root, 0o777);
    assert!(matches!(FileStore::open(&path), Err(StoreError::UnsafeDir { .. })));
    chmod(&root, 0o700);
    put(&FileStore::open(&path).unwrap(), "goto/alice", token(1)).await;
}
