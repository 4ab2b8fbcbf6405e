//! Generated files must match the code that generates them.

use std::path::Path;

const CRD_PATH: &str = "crds/encryptedsecrets.kmseal.dev.yaml";

/// Compares a committed file with freshly generated text. With KMSEAL_UPDATE_GENERATED=1 it
/// rewrites the file instead.
fn check_generated(path: &str, generated: &str, command: &str) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("KMSEAL_UPDATE_GENERATED").is_some() {
        std::fs::write(&full, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{path} is missing ({e}); create it with `{command}`"));
    assert!(
        committed == generated,
        "{path} is out of date with the Rust types; regenerate it with `{command}` (or run the tests with KMSEAL_UPDATE_GENERATED=1) and commit the result"
    );
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let crd = kmseal::cli::crd_yaml().unwrap();
    check_generated(
        CRD_PATH,
        &crd,
        "cargo run --bin kmseal -- crd > crds/encryptedsecrets.kmseal.dev.yaml",
    );
}

#[test]
fn chart_crd_matches_the_rust_types() {
    let crd = kmseal::cli::crd_yaml().unwrap();
    check_generated(
        "charts/kmseal/crds/encryptedsecrets.kmseal.dev.yaml",
        &crd,
        "cargo run --bin kmseal -- crd > charts/kmseal/crds/encryptedsecrets.kmseal.dev.yaml",
    );
}

/// Even without helm (tests/chart.rs renders the chart), the chart's environment variables must
/// be ones the controller reads, so a renamed flag cannot silently drop a setting.
#[test]
fn chart_sets_only_variables_the_controller_reads() {
    use clap::CommandFactory;
    let command = kmseal::config::ControllerArgs::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let deployment = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kmseal/templates/deployment.yaml"),
    )
    .unwrap();
    let set: Vec<&str> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|n| n.starts_with("KMSEAL_"))
        .collect();
    assert!(set.len() >= 10, "{set:?}");
    for name in set {
        assert!(
            known.iter().any(|k| k == name),
            "the chart sets {name}, which kmseal-controller does not read"
        );
    }
    assert!(
        deployment.contains("KMSEAL_LEADER_ELECTION"),
        "replicas > 1 turns on leader election"
    );
    assert!(known.iter().any(|k| k == "POD_NAME"));
}

#[test]
fn crd_has_the_documented_shape() {
    let crd: serde_json::Value = serde_saphyr::from_str(&kmseal::cli::crd_yaml().unwrap()).unwrap();
    assert_eq!(crd["spec"]["group"], "kmseal.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "esec");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Secret", "Age"]);
    let schema = &version["schema"]["openAPIV3Schema"]["properties"];
    let spec = &schema["spec"]["properties"];
    assert_eq!(
        spec["encryptedData"]["additionalProperties"]["type"],
        "string"
    );
    assert!(spec["keyId"].is_object());
    assert!(spec["template"]["properties"]["type"].is_object());
    let conditions = &schema["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
    let required: Vec<&str> = conditions["items"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(required.contains(&"type") && required.contains(&"status"));
}
