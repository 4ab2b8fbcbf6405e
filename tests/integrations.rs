//! Integrations kept in the repository: the Argo CD health check, run by Lua 5.1 (Argo CD's
//! gopher-lua is a Lua 5.1) against objects whose statuses the controller's own status logic
//! wrote, and its copy in docs/controller.md.

mod common;

use std::path::Path;

use kmseal::api::{EncryptedSecret, EncryptedSecretStatus};
use kmseal::reconcile::{self, Outcome, reason};
use serde_json::Value;

fn health_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/argocd/encryptedsecret-health.lua")
}

/// A JSON value as a Lua table constructor (strings escaped byte by byte).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for byte in s.bytes() {
                match byte {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(byte as char);
                    }
                    0x20..=0x7e => out.push(byte as char),
                    _ => out.push_str(&format!("\\{byte}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What the health check says of `object`: (status, message).
fn health(lua51: &Path, object: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\t\", hs.message or \"\")",
        lua(object),
        lua(&Value::String(health_script().display().to_string()))
    );
    let out = std::process::Command::new(lua51)
        .args(["-e", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\t').unwrap();
    (status.to_owned(), message.to_owned())
}

/// An object at `generation` whose status the controller wrote for `outcome` at
/// `observed` (or no status at all).
fn object(generation: i64, observed: Option<(i64, bool, &'static str)>) -> Value {
    let mut es = EncryptedSecret::with_name(Some("prod"), "db", Default::default());
    if let Some((observed, ready, reason)) = observed {
        es.metadata.generation = Some(observed);
        let outcome = Outcome {
            ready,
            reason,
            message: format!("what the controller says for {reason}"),
            key_arns: vec![],
            applied: None,
        };
        let status: EncryptedSecretStatus =
            reconcile::next_status(&es, &outcome, "2026-11-25T00:00:00Z");
        es.status = Some(status);
    }
    es.metadata.generation = Some(generation);
    serde_json::to_value(&es).unwrap()
}

#[test]
fn the_argo_cd_health_check_reads_the_controllers_status() {
    let Some(lua51) = common::tool("lua5.1", "KMSEAL_TEST_LUA") else {
        return;
    };
    let cases = [
        ("no status yet", object(1, None), "Progressing"),
        (
            "a spec the controller has not seen",
            object(2, Some((1, true, reason::SYNCED))),
            "Progressing",
        ),
        (
            "ready",
            object(1, Some((1, true, reason::SYNCED))),
            "Healthy",
        ),
        (
            "waiting for KMS (throttled)",
            object(1, Some((1, false, reason::THROTTLED))),
            "Progressing",
        ),
        (
            "waiting for KMS (unavailable)",
            object(1, Some((1, false, reason::KMS_UNAVAILABLE))),
            "Progressing",
        ),
        (
            "a value that does not decrypt",
            object(1, Some((1, false, reason::DECRYPT_FAILED))),
            "Degraded",
        ),
        (
            "a key the namespace may not use",
            object(1, Some((1, false, reason::KEY_NOT_ALLOWED))),
            "Degraded",
        ),
        (
            "a foreign Secret in the way",
            object(1, Some((1, false, reason::SECRET_EXISTS))),
            "Degraded",
        ),
    ];
    for (what, object, expected) in cases {
        let (status, message) = health(&lua51, &object);
        assert_eq!(status, expected, "{what}: {message}");
        if expected != "Progressing" || what.starts_with("waiting") {
            assert!(
                message.starts_with("what the controller says"),
                "{what}: {message}"
            );
        }
    }
}

/// The Argo CD snippet in docs/controller.md is the script, verbatim.
#[test]
fn the_docs_carry_the_health_check_verbatim() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/controller.md"))
            .unwrap();
    let script = std::fs::read_to_string(health_script()).unwrap();
    let key = "resource.customizations.health.kmseal.dev_EncryptedSecret: |\n";
    let start = doc.find(key).expect("the argocd-cm snippet") + key.len();
    let indented: String = script
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        doc[start..].starts_with(&indented),
        "the snippet in docs/controller.md differs from integrations/argocd/encryptedsecret-health.lua"
    );
}
