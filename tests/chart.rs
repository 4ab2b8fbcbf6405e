//! The Helm chart, rendered by helm 3.17 and helm 4.1 and checked: `helm lint --strict`, strict
//! schema validation for Kubernetes 1.31 to 1.34, and what a platform team relies on (RBAC
//! scope, names that do not collide, the values schema refusing typos, restricted pod security,
//! leader election, IRSA and its emulation).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:alias/kmseal";
const KUBERNETES: &[&str] = &["1.31.0", "1.32.0", "1.33.0", "1.34.0"];

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kmseal")
}

fn helms() -> Vec<(&'static str, PathBuf)> {
    [
        ("helm 3", "KMSEAL_TEST_HELM3"),
        ("helm 4", "KMSEAL_TEST_HELM4"),
    ]
    .into_iter()
    .filter_map(|(name, var)| common::tool(name, var).map(|path| (name, path)))
    .collect()
}

/// `helm template` of the chart as release `release` in `namespace`: the objects, or helm's
/// error.
fn render(helm: &Path, release: &str, namespace: &str, set: &[&str]) -> Result<Vec<Value>, String> {
    let mut command = Command::new(helm);
    command.args(["template", release]).arg(chart()).args([
        "--namespace",
        namespace,
        "--include-crds",
    ]);
    for value in set {
        command.args(["--set", value]);
    }
    let out = command.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "one {kind}: {objects:#?}");
    found[0]
}

fn env(deployment: &Value) -> Vec<(String, Value)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect()
}

fn env_value(deployment: &Value, name: &str) -> Option<Value> {
    env(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// The variations CI renders: the defaults and one for each way teams install it.
fn variations() -> Vec<(&'static str, Vec<String>)> {
    let keys = format!("kms.allowedKeys={{{KEY}}}");
    vec![
        ("defaults", vec![keys.clone()]),
        (
            "namespaced",
            vec![keys.clone(), "controller.namespaces={team-a,team-b}".into()],
        ),
        (
            "highly available",
            vec![
                keys.clone(),
                "replicaCount=3".into(),
                "podDisruptionBudget.enabled=true".into(),
            ],
        ),
        (
            "IRSA",
            vec![
                keys.clone(),
                "serviceAccount.roleArn=arn:aws:iam::111122223333:role/kmseal".into(),
            ],
        ),
        (
            "ServiceMonitor",
            vec![keys.clone(), "metrics.serviceMonitor.enabled=true".into()],
        ),
        (
            "webhook, cert-manager",
            vec![
                keys.clone(),
                "webhook.enabled=true".into(),
                "webhook.certManager.enabled=true".into(),
                "networkPolicy.enabled=true".into(),
                "controller.namespaces={team-a}".into(),
            ],
        ),
        (
            "webhook, its own certificate",
            vec![keys.clone(), "webhook.enabled=true".into()],
        ),
        (
            "webhook, own Secret",
            vec![
                keys.clone(),
                "webhook.enabled=true".into(),
                "webhook.secretName=kmseal-webhook-tls".into(),
                "webhook.caBundle=Q0EK".into(),
                "webhook.failurePolicy=Fail".into(),
            ],
        ),
        (
            "per-tenant identity, namespaced",
            vec![
                keys.clone(),
                "tenantIdentity.enabled=true".into(),
                "tenantIdentity.defaultServiceAccount=kmseal".into(),
                "tenantIdentity.required=true".into(),
                "tenantIdentity.rules[0].namespaces={team-a}".into(),
                "tenantIdentity.rules[0].identity=optional".into(),
                "controller.namespaces={team-a,team-b}".into(),
            ],
        ),
        (
            "all options",
            vec![
                "kms.keyPolicy[0].key=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                "kms.keyPolicy[0].namespaces={payments,payments-*}".into(),
                "kms.allowedSecretTypes={Opaque,kubernetes.io/tls}".into(),
                "controller.namespaces={payments}".into(),
                "controller.selector=shard=a".into(),
                "controller.extraArgs={--resync-interval=300}".into(),
                "controller.extraEnv[0].name=EXTRA".into(),
                "controller.extraEnv[0].value=enabled".into(),
                "irsaEmulation.enabled=true".into(),
                "irsaEmulation.roleArn=arn:aws:iam::000000000000:role/kmseal".into(),
                "aws.endpoint=http://moto.kmseal-e2e:5000".into(),
                "aws.region=us-east-1".into(),
                "replicaCount=2".into(),
                "podDisruptionBudget.enabled=true".into(),
                "networkPolicy.enabled=true".into(),
                "metrics.serviceMonitor.enabled=true".into(),
                "podLabels.team=platform".into(),
                "podAnnotations.note=x".into(),
                "priorityClassName=system-cluster-critical".into(),
                "imagePullSecrets[0].name=registry".into(),
                "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
                "topologySpreadConstraints[0].maxSkew=1".into(),
                "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname".into(),
                "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway".into(),
                "topologySpreadConstraints[0].labelSelector.matchLabels.app=kmseal".into(),
                "extraVolumes[0].name=tmp".into(),
                "extraVolumes[0].emptyDir.medium=Memory".into(),
                "extraVolumeMounts[0].name=tmp".into(),
                "extraVolumeMounts[0].mountPath=/tmp".into(),
            ],
        ),
    ]
}

#[test]
fn every_variation_lints_and_validates_strictly_for_kubernetes_1_31_to_1_34() {
    let helms = helms();
    let Some(validate) = common::tool("kubernetes-validate", "KMSEAL_TEST_KUBERNETES_VALIDATE")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (helm_name, helm) in &helms {
        for (variation, set) in variations() {
            let mut lint = Command::new(helm);
            lint.args(["lint", "--strict"]).arg(chart());
            for value in &set {
                lint.args(["--set", value]);
            }
            let out = lint.output().unwrap();
            assert!(
                out.status.success(),
                "{helm_name} lint, {variation}: {out:?}"
            );

            let set: Vec<&str> = set.iter().map(String::as_str).collect();
            let objects = render(helm, "kmseal", "kmseal", &set)
                .unwrap_or_else(|e| panic!("{helm_name}, {variation}: {e}"));
            // kubernetes-validate knows no ServiceMonitor (a CRD): it must select the metrics
            // Service and scrape its port.
            for monitor in find(&objects, "ServiceMonitor") {
                let service = one(&objects, "Service");
                let wanted = monitor["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .unwrap();
                for (label, value) in wanted {
                    assert_eq!(&service["metadata"]["labels"][label], value, "{variation}");
                }
                let port = &monitor["spec"]["endpoints"][0]["port"];
                assert_eq!(&service["spec"]["ports"][0]["name"], port, "{variation}");
            }
            // Nor cert-manager's kinds (CRDs): the_webhook_is_wired_to_its_service_and_certificate
            // checks them.
            let known: Vec<&Value> = objects
                .iter()
                .filter(|o| {
                    !["ServiceMonitor", "Certificate", "Issuer"]
                        .contains(&o["kind"].as_str().unwrap_or(""))
                })
                .collect();
            let file = dir.path().join("rendered.yaml");
            let mut text = String::new();
            for object in &known {
                text.push_str("---\n");
                text.push_str(&serde_json::to_string(object).unwrap());
                text.push('\n');
            }
            std::fs::write(&file, text).unwrap();
            for version in KUBERNETES {
                let out = Command::new(&validate)
                    .args(["--strict", "--quiet", "-k", version])
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{helm_name}, {variation}, Kubernetes {version}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[test]
fn watched_namespaces_get_roles_and_no_cluster_wide_access() {
    for (helm_name, helm) in helms() {
        let objects = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &format!("kms.allowedKeys={{{KEY}}}"),
                "controller.namespaces={team-a,team-b}",
            ],
        )
        .unwrap();
        assert!(find(&objects, "ClusterRole").is_empty(), "{helm_name}");
        assert!(
            find(&objects, "ClusterRoleBinding").is_empty(),
            "{helm_name}"
        );
        let roles = find(&objects, "Role");
        let namespaces: Vec<&str> = roles
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect();
        // One per watched namespace, and the Lease's in the release namespace.
        assert_eq!(namespaces, ["team-a", "team-b", "kmseal"], "{helm_name}");
        let secrets = roles[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resources"] == serde_json::json!(["secrets"]))
            .unwrap();
        assert_eq!(
            secrets["verbs"],
            serde_json::json!(["get", "list", "watch", "create", "update"])
        );
        let lease = roles[2]["rules"][0].clone();
        assert_eq!(lease["resources"], serde_json::json!(["leases"]));
        assert_eq!(
            lease["verbs"],
            serde_json::json!(["get", "create", "patch"])
        );
        for binding in find(&objects, "RoleBinding") {
            assert_eq!(binding["subjects"][0]["namespace"], "kmseal");
            assert_eq!(binding["subjects"][0]["name"], "kmseal");
        }
        let deployment = one(&objects, "Deployment");
        assert_eq!(
            env_value(deployment, "KMSEAL_NAMESPACES"),
            Some("team-a,team-b".into())
        );
        // Key rotation in the cluster patches values of EncryptedSecrets; report only, and the
        // controller has no right to.
        let verbs = |objects: &[Value]| {
            find(objects, "Role")[0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["resources"] == serde_json::json!(["encryptedsecrets"]))
                .unwrap()["verbs"]
                .clone()
        };
        assert_eq!(
            verbs(&objects),
            serde_json::json!(["get", "list", "watch", "patch"])
        );
        assert_eq!(
            env_value(deployment, "KMSEAL_ROTATION_POLICY"),
            Some("rewrap".into())
        );
        let report = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &format!("kms.allowedKeys={{{KEY}}}"),
                "controller.namespaces={team-a}",
                "controller.rotationPolicy=report",
            ],
        )
        .unwrap();
        assert_eq!(verbs(&report), serde_json::json!(["get", "list", "watch"]));
    }
}

#[test]
fn two_releases_never_share_a_name() {
    fn names(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["kind"] != "CustomResourceDefinition")
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }
    let keys = format!("kms.allowedKeys={{{KEY}}}");
    for (helm_name, helm) in helms() {
        // Two shards in one namespace, and one release name in two namespaces.
        let a = names(&render(&helm, "shard-a", "kmseal", &[&keys]).unwrap());
        let b = names(&render(&helm, "shard-b", "kmseal", &[&keys]).unwrap());
        let c = names(&render(&helm, "shard-a", "other", &[&keys]).unwrap());
        for (x, y) in [(&a, &b), (&a, &c)] {
            let shared: Vec<&String> = x.iter().filter(|n| y.contains(n)).collect();
            assert!(shared.is_empty(), "{helm_name}: {shared:?}");
        }
        // Each shard elects its own leader.
        let objects = render(&helm, "shard-a", "kmseal", &[&keys]).unwrap();
        assert_eq!(
            env_value(one(&objects, "Deployment"), "KMSEAL_LEADER_ELECTION_LEASE"),
            Some("shard-a-kmseal".into())
        );
        // A release named after the chart is not doubled.
        let objects = render(&helm, "kmseal", "kmseal", &[&keys]).unwrap();
        assert_eq!(one(&objects, "Deployment")["metadata"]["name"], "kmseal");
    }
}

#[test]
fn the_values_schema_and_the_templates_refuse_mistakes() {
    let keys = format!("kms.allowedKeys={{{KEY}}}");
    for (helm_name, helm) in helms() {
        for (mistake, set, expected) in [
            (
                "a misspelt value",
                vec![keys.as_str(), "replicaCont=3"],
                "replicaCont",
            ),
            (
                "a number as text",
                vec![keys.as_str(), "replicaCount=two"],
                "replicaCount",
            ),
            (
                "a bare alias",
                vec!["kms.allowedKeys={alias/kmseal}"],
                "allowedKeys",
            ),
            ("no key at all", vec![], "kms.allowedKeys"),
            (
                "no ServiceAccount",
                vec![keys.as_str(), "serviceAccount.create=false"],
                "serviceAccount.name",
            ),
            (
                "an environment variable's value as a number",
                vec![
                    keys.as_str(),
                    "controller.extraEnv[0].name=X",
                    "controller.extraEnv[0].value=1",
                ],
                "extraEnv",
            ),
            (
                "IRSA emulation without a role",
                vec![keys.as_str(), "irsaEmulation.enabled=true"],
                "irsaEmulation.roleArn",
            ),
        ] {
            let err = render(&helm, "kmseal", "kmseal", &set)
                .err()
                .unwrap_or_else(|| panic!("{helm_name}: {mistake} was accepted"));
            assert!(err.contains(expected), "{helm_name}, {mistake}: {err}");
        }
        // An existing ServiceAccount is used, not created.
        let objects = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &keys,
                "serviceAccount.create=false",
                "serviceAccount.name=kms-reader",
            ],
        )
        .unwrap();
        assert!(find(&objects, "ServiceAccount").is_empty());
        assert_eq!(
            one(&objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
            "kms-reader"
        );
    }
}

#[test]
fn the_pod_meets_the_restricted_pod_security_standard_and_serves_probes_on_both_ip_versions() {
    for (helm_name, helm) in helms() {
        let objects = render(
            &helm,
            "kmseal",
            "kmseal",
            &[&format!("kms.allowedKeys={{{KEY}}}")],
        )
        .unwrap();
        let deployment = one(&objects, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{helm_name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            env_value(deployment, "KMSEAL_METRICS_ADDRESS"),
            Some("[::]:8080".into())
        );
        // Leader election is on with one replica too: a rolling update runs two pods briefly.
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert_eq!(
            env_value(deployment, "KMSEAL_LEADER_ELECTION"),
            Some("true".into())
        );
        assert_eq!(find(&objects, "Role").len(), 1);
        // Every KMSEAL_ variable is one the controller reads.
        use clap::CommandFactory;
        let known: Vec<String> = kmseal::config::ControllerArgs::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        for (name, _) in env(deployment) {
            if name.starts_with("KMSEAL_") {
                assert!(known.contains(&name), "{helm_name}: {name}");
            }
        }
    }
}

#[test]
fn irsa_and_its_emulation_are_what_eks_gives_a_pod() {
    for (helm_name, helm) in helms() {
        let role = "arn:aws:iam::111122223333:role/kmseal";
        let objects = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &format!("kms.allowedKeys={{{KEY}}}"),
                &format!("serviceAccount.roleArn={role}"),
            ],
        )
        .unwrap();
        assert_eq!(
            one(&objects, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
            role,
            "{helm_name}"
        );

        let objects = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &format!("kms.allowedKeys={{{KEY}}}"),
                "irsaEmulation.enabled=true",
                &format!("irsaEmulation.roleArn={role}"),
            ],
        )
        .unwrap();
        let deployment = one(&objects, "Deployment");
        let token = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";
        assert_eq!(env_value(deployment, "AWS_ROLE_ARN"), Some(role.into()));
        assert_eq!(
            env_value(deployment, "AWS_WEB_IDENTITY_TOKEN_FILE"),
            Some(token.into())
        );
        let pod = &deployment["spec"]["template"]["spec"];
        let source = &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(source["audience"], "sts.amazonaws.com");
        assert_eq!(source["path"], "token");
        let mount = &pod["containers"][0]["volumeMounts"][0];
        assert_eq!(
            format!("{}/token", mount["mountPath"].as_str().unwrap()),
            token
        );
    }
}

/// helm 4 renders NOTES.txt on a client-side dry run (helm 3 still wants a cluster there).
#[test]
fn the_install_notes_say_how_to_check_kms_and_upgrade_the_crd() {
    let Some(helm) = common::tool("helm 4", "KMSEAL_TEST_HELM4") else {
        return;
    };
    let out = Command::new(helm)
        .args(["install", "--dry-run=client", "shard-a"])
        .arg(chart())
        .args([
            "--namespace",
            "kmseal",
            "--set",
            &format!("kms.allowedKeys={{{KEY}}}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let notes = &text[text.find("NOTES:").expect("notes")..];
    assert!(notes.contains("exec deploy/shard-a-kmseal"), "{notes}");
    assert!(notes.contains("--check-kms-key"), "{notes}");
    assert!(
        notes.contains("helm upgrade` never changes CRDs"),
        "{notes}"
    );
    assert!(notes.contains("kmseal seal --key"), "{notes}");
}

/// With `webhook.enabled`, every piece points at the next: the configuration at the webhook
/// Service, the Service at the container's webhook port, the controller at its address and
/// certificate, cert-manager's Certificate at the Secret the pod mounts and the Service's DNS
/// names; the controller's own namespace is never sent to it. By default the controller makes
/// its own certificate, with RBAC for that one Secret and that one configuration.
#[test]
fn the_webhook_is_wired_to_its_service_and_certificate() {
    let keys = format!("kms.allowedKeys={{{KEY}}}");
    for (_, helm) in helms() {
        let objects = render(
            &helm,
            "kmseal",
            "platform",
            &[
                &keys,
                "webhook.enabled=true",
                "webhook.certManager.enabled=true",
                "networkPolicy.enabled=true",
                "controller.namespaces={team-a,team-b}",
            ],
        )
        .unwrap();
        let configuration = one(&objects, "ValidatingWebhookConfiguration");
        let hook = &configuration["webhooks"][0];
        let service_name = hook["clientConfig"]["service"]["name"].as_str().unwrap();
        assert_eq!(hook["clientConfig"]["service"]["namespace"], "platform");
        assert_eq!(hook["clientConfig"]["service"]["path"], "/validate");
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["timeoutSeconds"], 5);
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["rules"][0]["resources"][0], "encryptedsecrets");
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
        let expressions = hook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        assert!(expressions.contains(&json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["platform"]})), "{expressions:?}");
        assert!(expressions.contains(&json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]})), "{expressions:?}");
        let service = find(&objects, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == service_name)
            .expect("the webhook Service");
        assert_eq!(service["spec"]["ports"][0]["port"], 443);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
        let deployment = one(&objects, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "webhook")
            .expect("a webhook port");
        let address = env_value(deployment, "KMSEAL_WEBHOOK_ADDRESS").unwrap();
        assert_eq!(address, json!(format!("[::]:{}", port["containerPort"])));
        let cert_dir = env_value(deployment, "KMSEAL_WEBHOOK_CERT_DIR").unwrap();
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == cert_dir)
            .expect("the certificate mounted where the controller reads it");
        assert!(
            mount.get("subPath").is_none(),
            "a subPath mount never sees a renewal"
        );
        let volume = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let certificate = one(&objects, "Certificate");
        assert_eq!(
            volume["secret"]["secretName"],
            certificate["spec"]["secretName"]
        );
        let dns: Vec<&str> = certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert!(
            dns.contains(&format!("{service_name}.platform.svc").as_str()),
            "{dns:?}"
        );
        assert_eq!(
            configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!(
                "platform/{}",
                certificate["metadata"]["name"].as_str().unwrap()
            )
        );
        let issuer = one(&objects, "Issuer");
        assert_eq!(
            certificate["spec"]["issuerRef"]["name"],
            issuer["metadata"]["name"]
        );
        let policy = one(&objects, "NetworkPolicy");
        let ports: Vec<&Value> = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["ports"].as_array().unwrap())
            .collect();
        assert!(ports.iter().any(|p| p["port"] == "webhook"), "{policy}");

        // A Secret of one's own needs its CA.
        let refused = render(
            &helm,
            "kmseal",
            "platform",
            &[&keys, "webhook.enabled=true", "webhook.secretName=s"],
        )
        .unwrap_err();
        assert!(refused.contains("webhook.caBundle"), "{refused}");

        // By default the controller makes its own certificate: it is told where to keep it,
        // which configuration to publish its CA in and what names to certify, and may touch
        // nothing else.
        let own = render(
            &helm,
            "kmseal",
            "platform",
            &[&keys, "webhook.enabled=true"],
        )
        .unwrap();
        let configuration = one(&own, "ValidatingWebhookConfiguration");
        assert!(
            configuration["webhooks"][0]["clientConfig"]
                .get("caBundle")
                .is_none()
        );
        assert!(configuration["metadata"].get("annotations").is_none());
        let deployment = one(&own, "Deployment");
        let secret = env_value(deployment, "KMSEAL_WEBHOOK_SECRET").unwrap();
        assert_eq!(
            env_value(deployment, "KMSEAL_WEBHOOK_CONFIGURATION").unwrap(),
            configuration["metadata"]["name"]
        );
        let service = configuration["webhooks"][0]["clientConfig"]["service"]["name"]
            .as_str()
            .unwrap();
        let hosts = env_value(deployment, "KMSEAL_WEBHOOK_HOSTS").unwrap();
        assert!(
            hosts
                .as_str()
                .unwrap()
                .split(',')
                .any(|h| h == format!("{service}.platform.svc")),
            "{hosts}"
        );
        assert!(env_value(deployment, "KMSEAL_WEBHOOK_CERT_DIR").is_none());
        let roles = find(&own, "Role");
        let role = roles
            .iter()
            .find(|r| r["rules"].to_string().contains("secrets"))
            .expect("a Role for the certificate Secret");
        assert_eq!(role["metadata"]["namespace"], "platform");
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get", "update"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            ])
        );
        let cluster_role = find(&own, "ClusterRole")
            .into_iter()
            .find(|r| {
                r["rules"]
                    .to_string()
                    .contains("validatingwebhookconfigurations")
            })
            .expect("a ClusterRole for the configuration");
        assert_eq!(
            cluster_role["rules"],
            json!([{
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingwebhookconfigurations"],
                "resourceNames": [configuration["metadata"]["name"]],
                "verbs": ["get", "patch"],
            }])
        );
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            assert!(
                find(&own, kind)
                    .iter()
                    .any(|b| b["roleRef"]["name"].as_str().unwrap().ends_with("-webhook")),
                "{kind}"
            );
        }
        // failurePolicy Fail on several replicas brings a PodDisruptionBudget; on one it does not
        // (it would block every drain).
        for (replicas, pdb) in [("2", true), ("1", false)] {
            let objects = render(
                &helm,
                "kmseal",
                "platform",
                &[
                    &keys,
                    "webhook.enabled=true",
                    "webhook.failurePolicy=Fail",
                    &format!("replicaCount={replicas}"),
                ],
            )
            .unwrap();
            assert_eq!(
                !find(&objects, "PodDisruptionBudget").is_empty(),
                pdb,
                "{replicas}"
            );
        }
        // Off by default: nothing of it.
        let plain = render(&helm, "kmseal", "platform", &[&keys]).unwrap();
        assert!(find(&plain, "ValidatingWebhookConfiguration").is_empty());
        assert!(env_value(one(&plain, "Deployment"), "KMSEAL_WEBHOOK_ADDRESS").is_none());
    }
}

#[test]
fn tenant_identity_adds_its_rbac_only_when_on_and_only_where_watched() {
    let rules_of = |role: &Value| -> Vec<(String, String)> {
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let verbs: Vec<String> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(move |res| {
                        let res = res.as_str().unwrap().to_owned();
                        verbs.clone().into_iter().map(move |v| (res.clone(), v))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let identity_rules = |rules: &[(String, String)]| -> Vec<(String, String)> {
        rules
            .iter()
            .filter(|(res, _)| res.starts_with("serviceaccounts"))
            .cloned()
            .collect()
    };
    let keys = format!("kms.allowedKeys={{{KEY}}}");
    for (helm_name, helm) in helms() {
        // Off: no access to ServiceAccounts at all.
        let off = render(&helm, "kmseal", "kmseal", &[&keys]).unwrap();
        let role = one(&off, "ClusterRole");
        assert!(identity_rules(&rules_of(role)).is_empty(), "{helm_name}");
        assert_eq!(
            env_value(one(&off, "Deployment"), "KMSEAL_TENANT_IDENTITY"),
            None
        );

        // On, cluster-wide: get serviceaccounts and create serviceaccounts/token, nothing more.
        let on = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &keys,
                "tenantIdentity.enabled=true",
                "tenantIdentity.defaultServiceAccount=kmseal",
                "tenantIdentity.required=true",
                "tenantIdentity.stsRequestsPerSecond=2",
            ],
        )
        .unwrap();
        assert_eq!(
            identity_rules(&rules_of(one(&on, "ClusterRole"))),
            vec![
                ("serviceaccounts".to_owned(), "get".to_owned()),
                ("serviceaccounts/token".to_owned(), "create".to_owned()),
            ],
            "{helm_name}"
        );
        let deployment = one(&on, "Deployment");
        for (name, value) in [
            ("KMSEAL_TENANT_IDENTITY", "true"),
            ("KMSEAL_DEFAULT_SERVICE_ACCOUNT", "kmseal"),
            ("KMSEAL_REQUIRE_SERVICE_ACCOUNT", "true"),
            ("KMSEAL_STS_REQUESTS_PER_SECOND", "2"),
        ] {
            assert_eq!(
                env_value(deployment, name),
                Some(Value::String(value.into())),
                "{helm_name}: {name}"
            );
        }

        // Namespaced: only in the watched namespaces' Roles; not in the Lease's.
        let namespaced = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &keys,
                "tenantIdentity.enabled=true",
                "controller.namespaces={team-a,team-b}",
            ],
        )
        .unwrap();
        assert!(find(&namespaced, "ClusterRole").is_empty());
        for role in find(&namespaced, "Role") {
            let namespace = role["metadata"]["namespace"].as_str().unwrap();
            let granted = identity_rules(&rules_of(role));
            if namespace == "kmseal" {
                assert!(granted.is_empty(), "{helm_name}: the Lease's Role");
            } else {
                assert!(["team-a", "team-b"].contains(&namespace));
                assert_eq!(granted.len(), 2, "{helm_name}: {namespace}");
            }
        }

        // Rules go into the key policy file, beside the keys.
        let with_rules = render(
            &helm,
            "kmseal",
            "kmseal",
            &[
                &keys,
                "tenantIdentity.enabled=true",
                "tenantIdentity.rules[0].namespaces={team-*}",
                "tenantIdentity.rules[0].serviceAccount=kmseal",
                "tenantIdentity.rules[0].identity=required",
            ],
        )
        .unwrap();
        let file = one(&with_rules, "ConfigMap")["data"]["key-policy.yaml"]
            .as_str()
            .unwrap()
            .to_owned();
        let (keys_in_file, identities) = kmseal::policy::KeyPolicy::parse_file(&file).unwrap();
        assert!(keys_in_file.is_empty());
        assert_eq!(identities.len(), 1, "{file}");
        assert_eq!(identities[0].service_account.as_deref(), Some("kmseal"));
        assert_eq!(
            env_value(one(&with_rules, "Deployment"), "KMSEAL_KEY_POLICY"),
            Some(Value::String("/etc/kmseal/policy/key-policy.yaml".into()))
        );

        // Mistakes the chart refuses.
        for (set, says) in [
            (
                vec![
                    "kms.allowAnyKey=true",
                    "tenantIdentity.enabled=true",
                    "tenantIdentity.rules[0].namespaces={a}",
                ],
                "kms.allowAnyKey",
            ),
            (
                vec![keys.as_str(), "tenantIdentity.rules[0].namespaces={a}"],
                "tenantIdentity.enabled",
            ),
            (
                vec![
                    keys.as_str(),
                    "tenantIdentity.enabled=true",
                    "tenantIdentity.rules[0].namespaces={a}",
                    "tenantIdentity.rules[0].identity=always",
                ],
                "identity",
            ),
            (
                vec![
                    keys.as_str(),
                    "tenantIdentity.enabled=true",
                    "tenantIdentity.defaultServiceAccount=../x",
                ],
                "defaultServiceAccount",
            ),
        ] {
            let error = render(&helm, "kmseal", "kmseal", &set).unwrap_err();
            assert!(error.contains(says), "{helm_name} {set:?}: {error}");
        }
    }
}
