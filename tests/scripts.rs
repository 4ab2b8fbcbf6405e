//! The repository's shell scripts pass ShellCheck (installed by scripts/tools.sh).

mod common;

use std::path::Path;

#[test]
fn every_script_passes_shellcheck() {
    let Some(shellcheck) = common::tool("shellcheck", "KMSEAL_TEST_SHELLCHECK") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts = vec![root.join(".ci/run")];
    for dir in ["scripts", "kind"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 7, "{scripts:?}");
    let out = std::process::Command::new(shellcheck)
        .args(["--severity=style", "--shell=bash"])
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
