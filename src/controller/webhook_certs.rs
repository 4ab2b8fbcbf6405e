//! The webhook's own certificate, when no one else provides one (`--webhook-secret`): a CA and
//! a serving certificate for `--webhook-hosts`, made by the first replica that finds none and
//! kept in a Secret of the controller's namespace, which every replica serves from; the CA
//! goes into the `caBundle` of the ValidatingWebhookConfiguration `--webhook-configuration`.
//! Both are renewed a month before they expire, the previous CA staying in the bundle until
//! the next renewal, so a replica still serving the old certificate stays trusted.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use zeroize::Zeroizing;

/// How long what is issued is valid.
const VALIDITY_SECS: u64 = 365 * 24 * 3600;
/// Renewed when less than this is left.
const RENEW_BEFORE_SECS: u64 = 30 * 24 * 3600;
const HOSTS_ANNOTATION: &str = "kmseal.dev/webhook-hosts";
const EXPIRES_ANNOTATION: &str = "kmseal.dev/webhook-cert-expires";

/// A CA bundle, a serving certificate and its key, as kept in the Secret.
#[derive(Clone)]
pub struct Issued {
    /// The CA certificates the API server should trust (PEM, the current one first).
    pub ca_bundle: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    hosts: String,
    expires: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("hosts", &self.hosts)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Makes a CA and a certificate for `hosts` signed by it, valid from `now` for a year. The
/// previous bundle's first CA stays in the new bundle. The CA's key signs once and is dropped:
/// a renewal makes a new CA, so nothing that could sign another certificate is kept.
pub fn issue(hosts: &[String], now: u64, previous: Option<&Issued>) -> Result<Issued, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| e.to_string())
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kmseal admission webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = at(now.saturating_sub(3600))?;
    ca.not_after = at(now + VALIDITY_SECS + 24 * 3600)?;
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let mut serving = CertificateParams::new(hosts.to_vec()).map_err(|e| e.to_string())?;
    serving.distinguished_name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    serving.not_before = at(now.saturating_sub(3600))?;
    serving.not_after = at(now + VALIDITY_SECS)?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = serving
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|e| e.to_string())?;
    let mut ca_bundle = ca_cert.pem();
    if let Some(previous) = previous
        && let Some(first) = first_pem(&previous.ca_bundle)
    {
        ca_bundle.push_str(&first);
    }
    Ok(Issued {
        ca_bundle,
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        hosts: hosts.join(","),
        expires: now + VALIDITY_SECS,
    })
}

/// The first PEM block of a bundle.
fn first_pem(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END)? + END.len();
    Some(format!("{}\n", &bundle[..end]))
}

/// Whether what is kept serves `hosts` for at least another month.
pub fn still_good(issued: &Issued, hosts: &[String], now: u64) -> bool {
    issued.hosts == hosts.join(",") && issued.expires > now + RENEW_BEFORE_SECS
}

fn from_secret(secret: &Secret) -> Option<Issued> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    Some(Issued {
        ca_bundle: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: Zeroizing::new(text("tls.key")?),
        hosts: annotations.get(HOSTS_ANNOTATION)?.clone(),
        expires: annotations.get(EXPIRES_ANNOTATION)?.parse().ok()?,
    })
}

fn to_secret(name: &str, issued: &Issued, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "kmseal-controller".to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (HOSTS_ANNOTATION.to_owned(), issued.hosts.clone()),
                (EXPIRES_ANNOTATION.to_owned(), issued.expires.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), bytes(&issued.ca_bundle)),
            ("tls.crt".to_owned(), bytes(&issued.cert_pem)),
            ("tls.key".to_owned(), bytes(&issued.key_pem)),
        ])),
        ..Secret::default()
    }
}

/// The Secret and the webhook configuration the controller keeps.
#[derive(Clone)]
pub struct SelfManaged {
    pub client: Client,
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    pub hosts: Vec<String>,
}

impl SelfManaged {
    /// What the Secret holds, made or renewed first if it holds nothing usable. Replicas that
    /// race agree on whichever write the API server took first.
    pub async fn ensure(&self, now: u64) -> Result<Issued, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..3 {
            let existing = api.get_opt(&self.secret).await?;
            let kept = existing.as_ref().and_then(from_secret);
            if let Some(kept) = &kept
                && still_good(kept, &self.hosts, now)
            {
                return Ok(kept.clone());
            }
            let issued = issue(&self.hosts, now, kept.as_ref()).map_err(|e| {
                kube::Error::Service(format!("cannot make the webhook certificate: {e}").into())
            })?;
            let written = match existing {
                None => {
                    api.create(
                        &PostParams::default(),
                        &to_secret(&self.secret, &issued, None),
                    )
                    .await
                }
                Some(old) => {
                    let version = old.metadata.resource_version.clone();
                    api.replace(
                        &self.secret,
                        &PostParams::default(),
                        &to_secret(&self.secret, &issued, version),
                    )
                    .await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %self.secret, hosts = %issued.hosts, "webhook certificate issued");
                    return Ok(issued);
                }
                // Another replica wrote first: use what it wrote.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        api.get(&self.secret)
            .await
            .map(|s| from_secret(&s))?
            .ok_or_else(|| kube::Error::Service("the webhook Secret holds no certificate".into()))
    }

    /// Sets `bundle` as every webhook's caBundle in the configuration, where it differs.
    pub async fn publish(&self, bundle: &str) -> Result<(), kube::Error> {
        use base64::Engine;
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(configuration) = api.get_opt(&self.configuration).await? else {
            tracing::warn!(name = %self.configuration, "the ValidatingWebhookConfiguration does not exist (yet); its caBundle is set once it does");
            return Ok(());
        };
        let wanted = base64::engine::general_purpose::STANDARD.encode(bundle);
        let mut operations = Vec::new();
        for (index, webhook) in configuration
            .webhooks
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let have = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0));
            if have.as_deref() != Some(wanted.as_str()) {
                operations.push(serde_json::json!({
                    "op": "add",
                    "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                    "value": wanted,
                }));
            }
        }
        if operations.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
            .map_err(|e| kube::Error::Service(e.to_string().into()))?;
        api.patch(
            &self.configuration,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
        tracing::info!(name = %self.configuration, "webhook caBundle set");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_are_kept_a_year_and_renewed_a_month_before() {
        let hosts = vec![
            "kmseal-webhook.kmseal.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let now = 1_800_000_000;
        let first = issue(&hosts, now, None).unwrap();
        assert!(first.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(first.key_pem.contains("PRIVATE KEY"));
        assert!(still_good(&first, &hosts, now));
        assert!(still_good(
            &first,
            &hosts,
            now + VALIDITY_SECS - RENEW_BEFORE_SECS - 1
        ));
        assert!(!still_good(
            &first,
            &hosts,
            now + VALIDITY_SECS - RENEW_BEFORE_SECS + 1
        ));
        assert!(!still_good(&first, &hosts[..1], now), "other hosts");
        // The round trip through the Secret keeps everything, and it holds no CA key.
        let secret = to_secret("s", &first, None);
        let kept: Vec<&str> = secret
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(kept, ["ca.crt", "tls.crt", "tls.key"]);
        let back = from_secret(&secret).unwrap();
        assert_eq!(back.ca_bundle, first.ca_bundle);
        assert_eq!(back.expires, first.expires);
        assert!(still_good(&back, &hosts, now));
        // A renewal keeps the previous CA in the bundle, after the new one.
        let second = issue(&hosts, now + VALIDITY_SECS, Some(&first)).unwrap();
        assert_eq!(second.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(second.ca_bundle.ends_with(&first.ca_bundle));
        let third = issue(&hosts, now + 2 * VALIDITY_SECS, Some(&second)).unwrap();
        assert_eq!(
            third.ca_bundle.matches("BEGIN CERTIFICATE").count(),
            2,
            "only one previous"
        );
        // What is served parses as rustls serves it.
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(first.key_pem.as_bytes());
        use rustls::pki_types::pem::PemObject;
        assert!(key.is_ok());
        assert!(
            !format!("{first:?}").contains("PRIVATE"),
            "Debug shows no key"
        );
    }
}
