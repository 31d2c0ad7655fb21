//! The seam every protocol adapter plugs into: adapters talk to the `Hub` only. None
//! names the storage traits (`polyport_core::engine`) or depends on an engine crate
//! outside its tests — so an adapter cannot tell, or care, which engine is underneath.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Protocol adapters (every crate but core, the engines and the binary).
const ADAPTERS: &[&str] = &["http", "graphql", "grpc", "mqtt", "amqp", "webhooks"];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn adapters_never_name_the_storage_traits() {
    let mut offenders = Vec::new();
    for a in ADAPTERS {
        let mut files = Vec::new();
        rust_files(&crates_dir().join(a).join("src"), &mut files);
        assert!(!files.is_empty(), "no sources for {a}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            if text.contains("polyport_core::engine") {
                offenders.push(f.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "adapters naming core::engine: {offenders:?}"
    );
}

#[test]
fn adapters_depend_on_no_engine_outside_their_tests() {
    for a in ADAPTERS {
        let manifest = std::fs::read_to_string(crates_dir().join(a).join("Cargo.toml")).unwrap();
        let doc: toml::Value = toml::from_str(&manifest).unwrap();
        let deps = doc.get("dependencies").and_then(|d| d.as_table()).unwrap();
        for engine in ["polyport-store", "polyport-cluster"] {
            assert!(!deps.contains_key(engine), "{a} depends on {engine}");
        }
    }
}

/// Core keeps the webhook registry's nouns; how deliveries are made (secret format,
/// retry schedule) is the delivery engine's, so another engine could bring its own.
#[test]
fn webhook_delivery_policy_lives_in_the_webhooks_crate() {
    let mut files = Vec::new();
    rust_files(&crates_dir().join("core").join("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for policy in ["whsec_", "RETRY_SCHEDULE", "fn new_secret()"] {
            assert!(
                !text.contains(policy),
                "{} holds delivery policy ({policy})",
                f.display()
            );
        }
    }
}
