#!/usr/bin/env python3
"""Known-answer vectors for kmseal envelope format v1, computed independently of the Rust code.

This follows docs/format.md only (header layout, AAD construction, encryption context) and uses
the `cryptography` package's AES-GCM, so a disagreement between the Rust implementation and the
document shows up as a failing test. Run: python3 tests/vectors/generate.py > tests/vectors/envelope_v1.json
"""
import base64
import json
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCOPES = {"strict": 0, "namespace": 1, "cluster": 2}
ALGORITHMS = {"kms-symmetric": 1, "rsaes-oaep-sha256": 2}


def u16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def header(scope, algorithm, sealed_at, key_arn, wrapped_key):
    return (
        b"kmseal"
        + bytes([1, SCOPES[scope], ALGORITHMS[algorithm]])
        + struct.pack(">Q", sealed_at)
        + u16(key_arn.encode())
        + u16(wrapped_key)
    )


def bound(scope, namespace, name):
    ns = namespace if scope in ("strict", "namespace") else ""
    nm = name if scope == "strict" else ""
    return ns, nm


def aad(head, scope, namespace, name, item):
    ns, nm = bound(scope, namespace, name)
    return head + b"kmseal.dev/v1" + u16(ns.encode()) + u16(nm.encode()) + u16(item.encode())


def context(scope, namespace, name):
    ns, nm = bound(scope, namespace, name)
    out = {}
    if ns:
        out["kmseal.dev/namespace"] = ns
    if nm:
        out["kmseal.dev/name"] = nm
    return out


CASES = [
    dict(
        description="strict scope, KMS-wrapped data key, text value",
        scope="strict", algorithm="kms-symmetric", sealed_at=1764000000,
        key_arn="arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        wrapped_key=bytes(range(1, 185)), data_key=bytes(range(32)), nonce=bytes(range(0xA0, 0xAC)),
        namespace="prod", name="db-credentials", item="password",
        plaintext=b"correct horse battery staple",
    ),
    dict(
        description="namespace scope, RSA-OAEP-SHA256-wrapped data key, empty value",
        scope="namespace", algorithm="rsaes-oaep-sha256", sealed_at=0,
        key_arn="arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef",
        wrapped_key=bytes([0x5A]) * 256, data_key=bytes([0xFF]) * 32, nonce=bytes(12),
        namespace="payments", name="ignored-by-scope", item="tls.key",
        plaintext=b"",
    ),
    dict(
        description="cluster scope, every byte value, maximal seal time",
        scope="cluster", algorithm="kms-symmetric", sealed_at=2**64 - 1,
        key_arn="arn:aws-cn:kms:cn-north-1:111122223333:key/abc",
        wrapped_key=b"\x00", data_key=bytes(range(100, 132)), nonce=bytes([0xFF]) * 12,
        namespace="ignored", name="ignored", item="blob_1.bin",
        plaintext=bytes(range(256)),
    ),
]


def main():
    vectors = []
    for case in CASES:
        head = header(case["scope"], case["algorithm"], case["sealed_at"], case["key_arn"], case["wrapped_key"])
        ad = aad(head, case["scope"], case["namespace"], case["name"], case["item"])
        sealed = head + case["nonce"] + AESGCM(case["data_key"]).encrypt(case["nonce"], case["plaintext"], ad)
        vectors.append({
            "description": case["description"],
            "scope": case["scope"],
            "algorithm": case["algorithm"],
            "sealed_at": case["sealed_at"],
            "key_arn": case["key_arn"],
            "wrapped_key_hex": case["wrapped_key"].hex(),
            "data_key_hex": case["data_key"].hex(),
            "nonce_hex": case["nonce"].hex(),
            "namespace": case["namespace"],
            "name": case["name"],
            "item": case["item"],
            "plaintext_hex": case["plaintext"].hex(),
            "encryption_context": context(case["scope"], case["namespace"], case["name"]),
            "header_hex": head.hex(),
            "aad_hex": ad.hex(),
            "sealed_base64": base64.b64encode(sealed).decode(),
        })
    print(json.dumps({"format": "kmseal envelope v1", "vectors": vectors}, indent=2))


if __name__ == "__main__":
    main()
