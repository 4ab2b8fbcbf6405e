//! The exact API traffic of `KubeClusterApi` (kube's tower-test pattern): method, path, query,
//! headers and body of every request, and no unexpected extra calls.

use std::collections::BTreeMap;

use http::{Method, Request, Response};
use kmseal::api::{EncryptedSecret, EncryptedSecretSpec};
use kmseal::controller::{ClusterApi, KubeClusterApi, WriteError};
use kmseal::reconcile::{self, DesiredSecret, EventSpec, ExistingSecret, Outcome, reason};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};
use zeroize::Zeroizing;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn client() -> (KubeClusterApi, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        KubeClusterApi::new(client, None, Some("kmseal-0".into())),
        handle,
    )
}

fn es() -> EncryptedSecret {
    let mut es = EncryptedSecret::with_name(Some("prod"), "db", EncryptedSecretSpec::default());
    es.metadata.uid = Some("uid-1".into());
    es.metadata.generation = Some(3);
    es
}

/// Takes the next request, checks method and URI, returns its body as JSON.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    uri: &str,
    response: Value,
) -> (Value, String) {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().to_string(), uri);
    let content_type = request
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&response).unwrap()))
            .unwrap(),
    );
    (body, content_type)
}

/// Takes the next request, checks method, URI and the metadata-only Accept header, answers
/// with `status` and `response`; returns the body and the content type.
async fn expect_write(
    handle: &mut ApiHandle,
    method: Method,
    uri: &str,
    status: u16,
    response: Value,
) -> (Value, String) {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().to_string(), uri);
    let (accept, content_type) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (header("accept"), header("content-type"))
    };
    assert!(
        accept.starts_with("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
        "the answer must not carry the Secret's data back: {accept}"
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap();
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&response).unwrap()))
            .unwrap(),
    );
    (body, content_type)
}

fn partial(rv: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": "db", "namespace": "prod", "resourceVersion": rv}})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": format!("secrets \"db\": {reason}")})
}

fn check_secret_body(body: &Value) {
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["data"]["password"], "czNjcjN0");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kmseal"
    );
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["apiVersion"], "kmseal.dev/v1alpha1");
    assert_eq!(owner["kind"], "EncryptedSecret");
    assert_eq!(owner["uid"], "uid-1");
    assert_eq!(owner["controller"], true);
}

fn desired(replacing: Option<&str>) -> DesiredSecret {
    let existing = ExistingSecret::default();
    reconcile::desired_secret(
        &es(),
        BTreeMap::from([("password".into(), Zeroizing::new(b"s3cr3t".to_vec()))]),
        replacing.map(|rv| (rv, &existing)),
    )
}

async fn no_further_call(mut handle: ApiHandle) {
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), handle.next_request())
            .await
            .is_err(),
        "no further API call"
    );
}

#[tokio::test]
async fn a_new_secret_is_created_and_never_upserted() {
    let (api, mut handle) = client();
    let server = tokio::spawn(async move {
        let uri = "/api/v1/namespaces/prod/secrets?fieldManager=kmseal-controller";
        let (body, content_type) =
            expect_write(&mut handle, Method::POST, uri, 201, partial("42")).await;
        assert_eq!(content_type, "application/json");
        check_secret_body(&body);
        assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
        // Someone else created it meanwhile: 409, and nothing is overwritten.
        expect_write(
            &mut handle,
            Method::POST,
            uri,
            409,
            status(409, "AlreadyExists"),
        )
        .await;
        handle
    });
    assert_eq!(api.create_secret(&desired(None)).await.unwrap(), "42");
    assert!(matches!(
        api.create_secret(&desired(None)).await,
        Err(WriteError::Conflict)
    ));
    no_further_call(server.await.unwrap()).await;
}

#[tokio::test]
async fn an_owned_secret_is_replaced_only_at_the_version_that_was_checked() {
    let (api, mut handle) = client();
    let server = tokio::spawn(async move {
        let uri = "/api/v1/namespaces/prod/secrets/db?fieldManager=kmseal-controller";
        let (body, _) = expect_write(&mut handle, Method::PUT, uri, 200, partial("43")).await;
        check_secret_body(&body);
        assert_eq!(
            body["metadata"]["resourceVersion"], "42",
            "the precondition"
        );
        expect_write(&mut handle, Method::PUT, uri, 409, status(409, "Conflict")).await;
        expect_write(&mut handle, Method::PUT, uri, 404, status(404, "NotFound")).await;
        let (_, _) = expect_write(&mut handle, Method::PUT, uri, 422, status(422, "Invalid")).await;
        handle
    });
    assert_eq!(
        api.replace_secret(&desired(Some("42"))).await.unwrap(),
        "43"
    );
    assert!(matches!(
        api.replace_secret(&desired(Some("42"))).await,
        Err(WriteError::Conflict)
    ));
    assert!(matches!(
        api.replace_secret(&desired(Some("42"))).await,
        Err(WriteError::Gone)
    ));
    let invalid = api.replace_secret(&desired(Some("42"))).await.unwrap_err();
    assert!(invalid.to_string().contains("Invalid (422)"), "{invalid}");
    no_further_call(server.await.unwrap()).await;
}

#[tokio::test]
async fn status_is_applied_to_the_status_subresource_typed() {
    let (api, mut handle) = client();
    let es = es();
    let status = reconcile::next_status(
        &es,
        &Outcome {
            ready: false,
            reason: reason::ACCESS_DENIED,
            message: "KMS denied kms:Decrypt".into(),
            key_arns: vec![],
            applied: None,
        },
        "2026-11-24T00:00:00Z",
    );
    let server = tokio::spawn(async move {
        let (body, content_type) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/kmseal.dev/v1alpha1/namespaces/prod/encryptedsecrets/db/status?&force=true&fieldManager=kmseal-controller",
            json!({"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecret", "metadata": {"name": "db"}, "spec": {}}),
        )
        .await;
        assert_eq!(content_type, "application/apply-patch+yaml");
        assert_eq!(body["apiVersion"], "kmseal.dev/v1alpha1");
        assert_eq!(body["kind"], "EncryptedSecret");
        assert!(body.get("spec").is_none(), "only status is applied: {body}");
        let ready = &body["status"]["conditions"][0];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "AccessDenied");
        assert_eq!(ready["observedGeneration"], 3);
        assert_eq!(ready["lastTransitionTime"], "2026-11-24T00:00:00Z");
        assert_eq!(body["status"]["observedGeneration"], 3);
    });
    api.apply_status(&es, &status).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn existing_secret_metadata_is_read_without_its_data() {
    let (api, mut handle) = client();
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().to_string(),
            "/api/v1/namespaces/prod/secrets/db"
        );
        let accept = request
            .headers()
            .get("accept")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            accept.contains("as=PartialObjectMetadata"),
            "metadata only: {accept}"
        );
        let body = json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "db", "namespace": "prod", "resourceVersion": "7",
                         "annotations": {"kmseal.dev/managed": "true"}}
        });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        let (_, send) = handle.next_request().await.unwrap();
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "secrets \"gone\" not found"});
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&not_found).unwrap()))
                .unwrap(),
        );
    });
    let existing = api.secret_meta("prod", "db").await.unwrap().unwrap();
    assert_eq!(existing.resource_version.as_deref(), Some("7"));
    assert_eq!(existing.annotations[reconcile::ADOPT_ANNOTATION], "true");
    assert!(api.secret_meta("prod", "gone").await.unwrap().is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn events_go_to_the_events_api_about_the_encrypted_secret() {
    let (api, mut handle) = client();
    let es = es();
    let server = tokio::spawn(async move {
        let (body, _) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/prod/events?",
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": "2026-11-24T00:00:00.000000Z"}),
        )
        .await;
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "SecretExists");
        assert_eq!(body["regarding"]["kind"], "EncryptedSecret");
        assert_eq!(body["regarding"]["name"], "db");
        assert_eq!(body["reportingController"], "kmseal-controller");
        assert!(body["note"].as_str().unwrap().contains("annotate"));
    });
    api.publish_event(
        &es,
        &EventSpec {
            warning: true,
            reason: reason::SECRET_EXISTS,
            note: "kmseal will not overwrite it; annotate it to hand it over".into(),
        },
    )
    .await
    .unwrap();
    server.await.unwrap();
}
