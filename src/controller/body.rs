//! The request body of a Secret write, serialized straight into one zeroizing buffer.
//!
//! Values go from their zeroizing buffers to base64 inside this buffer without any other copy
//! (no `ByteString`, no `serde_json::Value`, no intermediate `String`), and the buffer is sized
//! exactly before it is filled, so it never reallocates and leaves no stale copy behind.

use std::collections::BTreeMap;
use std::io;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::ser::{Serialize, SerializeMap, Serializer};
use zeroize::Zeroizing;

use crate::reconcile::DesiredSecret;

struct Base64Value<'a>(&'a [u8]);

impl Serialize for Base64Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Base64Display::new(self.0, &BASE64))
    }
}

struct Data<'a>(&'a BTreeMap<String, Zeroizing<Vec<u8>>>);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (item, value) in self.0 {
            map.serialize_entry(item, &Base64Value(value))?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    #[serde(rename = "type")]
    type_: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    immutable: Option<bool>,
    data: Data<'a>,
}

/// Counts bytes without keeping them.
struct Count(usize);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The JSON body of a create or replace of `secret` (`apiVersion: v1`, `kind: Secret`).
pub fn secret_body(secret: &DesiredSecret) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let body = Body {
        api_version: "v1",
        kind: "Secret",
        metadata: &secret.metadata,
        type_: &secret.type_,
        immutable: secret.immutable,
        data: Data(&secret.data),
    };
    let mut count = Count(0);
    serde_json::to_writer(&mut count, &body)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, &body)?;
    debug_assert_eq!(out.len(), count.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    #[test]
    fn the_body_is_the_secret_and_fills_its_buffer_exactly() {
        let secret = DesiredSecret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("prod".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            type_: "kubernetes.io/basic-auth".into(),
            immutable: Some(true),
            data: BTreeMap::from([
                ("password".into(), Zeroizing::new(b"s3cr3t".to_vec())),
                ("binary".into(), Zeroizing::new((0..=255u8).collect())),
                ("empty".into(), Zeroizing::new(Vec::new())),
            ]),
        };
        let body = secret_body(&secret).unwrap();
        assert_eq!(
            body.len(),
            body.capacity(),
            "sized exactly, never reallocated"
        );
        let parsed: Secret = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.metadata.name.as_deref(), Some("db"));
        assert_eq!(parsed.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(parsed.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(parsed.immutable, Some(true));
        let data = parsed.data.unwrap();
        assert_eq!(data["password"].0, b"s3cr3t");
        assert_eq!(data["binary"].0, (0..=255u8).collect::<Vec<_>>());
        assert!(data["empty"].0.is_empty());
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["kind"], "Secret");
    }
}
