//! The real Kubernetes control plane that `scripts/test.sh` starts (`scripts/control-plane.sh`:
//! etcd, kube-apiserver, kube-controller-manager, built from Go modules), and what the tests
//! do with it: clients for the admin and for ServiceAccounts (TokenRequest), kubectl and helm,
//! the controller binary run on this host as a given ServiceAccount, and the API server's audit
//! log, which counts what the server saw.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;

/// A running control plane, from the variables `scripts/control-plane.sh env` prints.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    pub server: String,
    pub audit_log: PathBuf,
    pub dir: PathBuf,
    pub script: PathBuf,
    pub etcd_url: String,
    pub ca_file: PathBuf,
    /// cert-manager's CRDs (from its Go module), for the chart's cert-manager objects.
    pub cert_manager_crds: PathBuf,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ControlPlane {
    /// The one `scripts/test.sh` started; `None` (the test is skipped) when there is none,
    /// unless the run requires it (`KMSEAL_REQUIRE_EMULATORS`).
    pub fn from_env() -> Option<Self> {
        match Self::read(var) {
            Some(cp) => Some(cp),
            None if std::env::var_os("KMSEAL_REQUIRE_EMULATORS").is_some() => panic!(
                "KMSEAL_CONTROL_PLANE_KUBECONFIG is not set, but KMSEAL_REQUIRE_EMULATORS is: start it with scripts/control-plane.sh start and eval \"$(scripts/control-plane.sh env)\""
            ),
            None => {
                eprintln!(
                    "SKIPPED: no Kubernetes control plane (KMSEAL_CONTROL_PLANE_KUBECONFIG unset). Run ./scripts/test.sh, which builds and starts one, to run this test."
                );
                None
            }
        }
    }

    fn read(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        Some(ControlPlane {
            kubeconfig: get("KMSEAL_CONTROL_PLANE_KUBECONFIG")?.into(),
            server: get("KMSEAL_CONTROL_PLANE_SERVER")?,
            audit_log: get("KMSEAL_CONTROL_PLANE_AUDIT_LOG")?.into(),
            dir: get("KMSEAL_CONTROL_PLANE_DIR")?.into(),
            script: get("KMSEAL_CONTROL_PLANE_SCRIPT")?.into(),
            etcd_url: get("KMSEAL_CONTROL_PLANE_ETCD_URL")?,
            ca_file: get("KMSEAL_CONTROL_PLANE_CA_FILE")?.into(),
            cert_manager_crds: get("KMSEAL_CONTROL_PLANE_CERT_MANAGER_CRDS")?.into(),
        })
    }

    /// A control plane of its own, in `dir` (for faults that would disturb other tests:
    /// restarting the API server, compacting etcd); stopped when dropped.
    pub fn start_own(dir: &Path) -> OwnControlPlane {
        let shared = Self::from_env().expect("the shared control plane names the script");
        let run = |command: &str| {
            let out = Command::new("bash")
                .arg(&shared.script)
                .arg(command)
                .env("KMSEAL_CONTROL_PLANE_DIR", dir)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "control-plane.sh {command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run("start");
        let env = run("env");
        let vars: BTreeMap<String, String> = env
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        let cp = Self::read(|name| vars.get(name).cloned()).expect("the env of the own plane");
        OwnControlPlane {
            cp,
            dir: dir.to_owned(),
        }
    }

    pub fn admin_kubeconfig(&self) -> String {
        std::fs::read_to_string(&self.kubeconfig).unwrap()
    }

    pub async fn admin(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig()).await
    }

    /// A kubeconfig that authenticates with `token` (a ServiceAccount's).
    pub fn token_kubeconfig(&self, token: &str) -> String {
        let ca = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            std::fs::read(&self.ca_file).unwrap(),
        );
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kmseal-test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: kmseal-test\n  context: {{cluster: kmseal-test, user: sa}}\ncurrent-context: kmseal-test\n",
            self.server
        )
    }

    /// Restarts kube-apiserver (etcd and the controller manager keep running), after `pause`.
    pub fn restart_apiserver(&self, pause: Duration) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("restart-apiserver")
            .arg(pause.as_secs().to_string())
            .env("KMSEAL_CONTROL_PLANE_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restart-apiserver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Compacts etcd's history up to now (and physically): a watch that resumes from an older
    /// resourceVersion is then told it is too old, and must list again.
    pub fn compact_etcd(&self) -> u64 {
        let post = |path: &str, body: &str| -> Value {
            let out = Command::new("curl")
                .args(["-sS", "-X", "POST", "-d", body])
                .arg(format!("{}{path}", self.etcd_url))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let status = post("/v3/kv/range", r#"{"key":"AA==","limit":1}"#);
        let revision: u64 = status["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        );
        revision
    }

    /// kubectl against this cluster with `kubeconfig` (the admin's when `None`).
    pub fn kubectl(&self, kubeconfig: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig.unwrap_or(&self.kubeconfig))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// The audit log's events so far (one JSON object per line).
    pub fn audit(&self) -> Vec<Value> {
        audit_events(&self.audit_log)
    }
}

/// A control plane a test started for itself; stopped when dropped.
pub struct OwnControlPlane {
    pub cp: ControlPlane,
    dir: PathBuf,
}

impl std::ops::Deref for OwnControlPlane {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.cp
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.cp.script)
            .arg("stop")
            .env("KMSEAL_CONTROL_PLANE_DIR", &self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

pub fn audit_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One request as the API server saw it, once answered (the `ResponseComplete` stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
}

/// The answered requests in `events` (watches, which stay open, have none until they end).
pub fn requests(events: &[Value]) -> Vec<Request> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .map(|e| Request {
            user: text(&e["user"]["username"]),
            verb: text(&e["verb"]),
            resource: text(&e["objectRef"]["resource"]),
            subresource: text(&e["objectRef"]["subresource"]),
            namespace: text(&e["objectRef"]["namespace"]),
            name: text(&e["objectRef"]["name"]),
            code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        })
        .collect()
}

/// The requests `events` say arrived (the `RequestReceived` stage), watches included, with no
/// response code.
pub fn received(events: &[Value], user: &str) -> Vec<Request> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    events
        .iter()
        .filter(|e| e["stage"] == "RequestReceived" && e["user"]["username"] == user)
        .map(|e| Request {
            user: text(&e["user"]["username"]),
            verb: text(&e["verb"]),
            resource: text(&e["objectRef"]["resource"]),
            subresource: text(&e["objectRef"]["subresource"]),
            namespace: text(&e["objectRef"]["namespace"]),
            name: text(&e["objectRef"]["name"]),
            code: 0,
        })
        .collect()
}

pub async fn client_from(kubeconfig: &str) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Creates the namespace unless it exists.
pub async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply("kmseal-tests").force(),
        &Patch::Apply(&ns),
    )
    .await
    .unwrap();
}

/// Applies the CRD from `crds/` and waits until the API server serves it.
pub async fn install_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/encryptedsecrets.kmseal.dev.yaml"),
    )
    .unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("kmseal-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the CRD");
    for _ in 0..100 {
        let now = api.get(&name).await.unwrap();
        let established = now
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the CRD was not established");
}

/// A token the API server signs for the ServiceAccount `namespace/name`, for `audience` (the
/// API server's own when `None`), valid for `seconds`.
pub async fn token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: Option<&str>,
    seconds: i64,
) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            expiration_seconds: Some(seconds),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let made: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
    made.status.expect("a token").token
}

/// The claims of a JWT (not verified: for looking at what the API server signed).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        payload.trim_end_matches('='),
    )
    .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A free port on loopback (for the controller's metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `kmseal-controller` binary running on this host, its log in a file; killed when
/// dropped.
pub struct ControllerProcess {
    child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl ControllerProcess {
    /// Runs the binary with exactly `env` (nothing of this machine's environment but PATH, and
    /// no AWS files) and `args`; its metrics on a free port.
    pub fn spawn(env: &BTreeMap<String, String>, args: &[String], log: PathBuf) -> Self {
        let metrics_port = free_port();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kmseal-controller"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env)
            .env(
                "KMSEAL_METRICS_ADDRESS",
                format!("127.0.0.1:{metrics_port}"),
            )
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        ControllerProcess {
            child,
            log,
            metrics_port,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// The sum of the samples of the lines of `/metrics` that start with `metric`.
    pub async fn metric(&self, metric: &str) -> Option<f64> {
        let body = http_get(self.metrics_port, "/metrics").await?;
        Some(
            body.lines()
                .filter(|l| l.starts_with(metric))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Lines of its log that say the API server refused it access (403).
    pub fn forbidden_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            // Not a bare "403": a timestamp such as 04:42:49.104036 holds one.
            .filter(|l| {
                l.contains("code: 403")
                    || l.contains(" 403 ")
                    || l.to_lowercase().contains("forbidden")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // What the controller last said, for the failure (its log holds no secret).
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last lines of the controller's log ({}):",
                self.log.display()
            );
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A release of `charts/kmseal`, installed with `helm` on the control plane.
pub struct Release {
    pub helm: PathBuf,
    pub name: String,
    pub namespace: String,
    /// `--set` values.
    pub set: Vec<String>,
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kmseal")
}

impl Release {
    fn helm(&self, cp: &ControlPlane, verb: &[&str]) -> Output {
        let mut cmd = Command::new(&self.helm);
        cmd.args(verb)
            .args(["--namespace", &self.namespace])
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig);
        if verb[0] != "uninstall" {
            for value in &self.set {
                cmd.args(["--set", value]);
            }
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// `helm upgrade --install` (the namespace created): the API server must accept every
    /// object of the chart. Nothing runs it (no kubelet): the controller runs on this host.
    pub fn install(&self, cp: &ControlPlane) {
        let chart = chart_dir();
        let out = self.helm(
            cp,
            &[
                "upgrade",
                "--install",
                &self.name,
                chart.to_str().unwrap(),
                "--create-namespace",
            ],
        );
        assert!(
            out.status.success(),
            "helm install {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn uninstall(&self, cp: &ControlPlane) {
        let out = self.helm(cp, &["uninstall", &self.name, "--wait"]);
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The chart's objects as this release renders them.
    pub fn rendered(&self, cp: &ControlPlane) -> Vec<Value> {
        let chart = chart_dir();
        let out = self.helm(cp, &["template", &self.name, chart.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
        docs.into_iter().filter(|d| !d.is_null()).collect()
    }

    /// The controller as this release's Deployment would run it, on this host: the same
    /// ServiceAccount (a TokenRequest token in its kubeconfig, so the chart's RBAC is exactly
    /// what it has), the same environment and arguments, and, where the chart emulates IRSA,
    /// a token for the ServiceAccount with the chart's STS audience in the file
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` names. `pod` stands for the pod's name.
    pub async fn controller(&self, cp: &ControlPlane, dir: &Path, pod: &str) -> ControllerProcess {
        let objects = self.rendered(cp);
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment");
        let pod_spec = &deployment["spec"]["template"]["spec"];
        let account = pod_spec["serviceAccountName"].as_str().unwrap().to_owned();
        let container = &pod_spec["containers"][0];
        let mut env: BTreeMap<String, String> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let args: Vec<String> = container["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let admin = cp.admin().await;
        let api_token = token(&admin, &self.namespace, &account, None, 3600).await;
        let kubeconfig = dir.join(format!("{pod}.kubeconfig"));
        std::fs::write(&kubeconfig, cp.token_kubeconfig(&api_token)).unwrap();
        env.insert(
            "KMSEAL_KUBECONFIG".into(),
            kubeconfig.to_str().unwrap().into(),
        );
        env.insert("POD_NAME".into(), pod.into());
        env.insert("POD_NAMESPACE".into(), self.namespace.clone());
        if env.contains_key("AWS_WEB_IDENTITY_TOKEN_FILE") {
            let audience = pod_spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| {
                    v["projected"]["sources"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .find_map(|s| {
                    s["serviceAccountToken"]["audience"]
                        .as_str()
                        .map(str::to_owned)
                })
                .expect("the projected STS token");
            let sts_token = token(&admin, &self.namespace, &account, Some(&audience), 3600).await;
            let file = dir.join(format!("{pod}.sts-token"));
            std::fs::write(&file, sts_token).unwrap();
            env.insert(
                "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
                file.to_str().unwrap().into(),
            );
        }
        if env.contains_key("KMSEAL_KEY_POLICY") {
            let policy = objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["data"]["key-policy.yaml"].is_string())
                .expect("the key policy ConfigMap");
            let file = dir.join(format!("{pod}.key-policy.yaml"));
            std::fs::write(&file, policy["data"]["key-policy.yaml"].as_str().unwrap()).unwrap();
            env.insert("KMSEAL_KEY_POLICY".into(), file.to_str().unwrap().into());
        }
        if let Some(cert_dir) = env.get("KMSEAL_WEBHOOK_CERT_DIR").cloned() {
            // What the kubelet mounts there: the Secret the pod's volume names.
            let mounted = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == cert_dir.as_str())
                .and_then(|m| m["name"].as_str());
            let secret = mounted.and_then(|volume| {
                pod_spec["volumes"]
                    .as_array()?
                    .iter()
                    .find(|v| v["name"] == volume)?["secret"]["secretName"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(secret) = secret {
                let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                    Api::namespaced(admin.clone(), &self.namespace);
                let found = secrets
                    .get(&secret)
                    .await
                    .expect("the webhook's TLS Secret");
                let files = dir.join(format!("{pod}.webhook-tls"));
                std::fs::create_dir_all(&files).unwrap();
                for (name, value) in found.data.unwrap_or_default() {
                    std::fs::write(files.join(name), value.0).unwrap();
                }
                env.insert(
                    "KMSEAL_WEBHOOK_CERT_DIR".into(),
                    files.to_str().unwrap().into(),
                );
            }
        }
        ControllerProcess::spawn(&env, &args, dir.join(format!("{pod}.log")))
    }

    /// The user name the API server knows the controller by.
    pub fn user(&self, cp: &ControlPlane) -> String {
        let objects = self.rendered(cp);
        let account = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .and_then(|d| d["spec"]["template"]["spec"]["serviceAccountName"].as_str())
            .unwrap()
            .to_owned();
        format!("system:serviceaccount:{}:{account}", self.namespace)
    }
}

/// GET `path` on loopback `port` (plain HTTP/1.1), the body.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// helm 3 or 4, as `scripts/tools.sh` installed them.
pub fn helm(var: &str) -> Option<PathBuf> {
    super::tool("helm", var)
}
