#!/usr/bin/env python3
"""Known-answer vectors for the kmseal envelope formats, computed independently of the Rust code.

This follows docs/format.md only (header layout, AAD construction, encryption context) and uses
the `cryptography` package's AES-GCM, so a disagreement between the Rust implementation and the
document shows up as a failing test. Run:

    python3 tests/vectors/generate.py v1 > tests/vectors/envelope_v1.json
    python3 tests/vectors/generate.py v2 > tests/vectors/envelope_v2.json

With no argument it prints the v1 vectors. The v2 output also holds re-wrapped values (the same
sealed value with only its wrapping replaced) and the encryption contexts of plain KMS ciphertext
items; before printing, every v2 value is parsed back and decrypted as a self-check.
"""
import base64
import json
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCOPES = {"strict": 0, "namespace": 1, "cluster": 2}
ALGORITHMS = {"kms-symmetric": 1, "rsaes-oaep-sha256": 2}


def u16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def u32(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def bound(scope, namespace, name):
    ns = namespace if scope in ("strict", "namespace") else ""
    nm = name if scope == "strict" else ""
    return ns, nm


# Version 1 (read only)


def header(scope, algorithm, sealed_at, key_arn, wrapped_key):
    return (
        b"kmseal"
        + bytes([1, SCOPES[scope], ALGORITHMS[algorithm]])
        + struct.pack(">Q", sealed_at)
        + u16(key_arn.encode())
        + u16(wrapped_key)
    )


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


def main_v1():
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


# Version 2


def printable(text):
    return all(0x20 <= ord(c) <= 0x7E for c in text)


def prefix_v2(scope, algorithm):
    return b"kmseal" + bytes([2, SCOPES[scope], ALGORITHMS[algorithm]])


def wrapping_v2(wrapped_at, key_arn, key_material_id, wrapped_key):
    assert 1 <= len(key_arn) <= 2048 and printable(key_arn) and key_arn.startswith("arn:")
    assert len(key_material_id) <= 128 and printable(key_material_id)
    assert 1 <= len(wrapped_key) <= 6144
    return (
        struct.pack(">Q", wrapped_at)
        + u16(key_arn.encode())
        + u16(key_material_id.encode())
        + u16(wrapped_key)
    )


def aad_v2(scope, algorithm, namespace, name, item):
    ns, nm = bound(scope, namespace, name)
    fields = [ns.encode(), nm.encode(), item.encode()]
    assert all(len(f) <= 253 for f in fields)
    return prefix_v2(scope, algorithm) + b"kmseal.dev/v2" + b"".join(u32(f) for f in fields)


def context_v2(scope, namespace, name):
    out = {"kmseal.dev/v": "2", "kmseal.dev/namespace": "*" if scope == "cluster" else namespace}
    if scope == "strict":
        out["kmseal.dev/name"] = name
    return out


def context_plain(scope, namespace, name, item):
    out = {"kmseal.dev/namespace": "*" if scope == "cluster" else namespace}
    if scope == "strict":
        out["kmseal.dev/name"] = name
    out["kmseal.dev/item"] = item
    return out


def parse_v2(sealed):
    """Reads a v2 sealed value back by the offsets of the layout table."""
    assert sealed[:7] == b"kmseal\x02"
    scope = {v: k for k, v in SCOPES.items()}[sealed[7]]
    algorithm = {v: k for k, v in ALGORITHMS.items()}[sealed[8]]
    (wrapped_at,) = struct.unpack(">Q", sealed[9:17])
    pos = 17
    fields = []
    for _ in range(3):
        (length,) = struct.unpack(">H", sealed[pos:pos + 2])
        fields.append(sealed[pos + 2:pos + 2 + length])
        pos += 2 + length
    key_arn, key_material_id, wrapped_key = fields
    return dict(
        scope=scope, algorithm=algorithm, wrapped_at=wrapped_at, key_arn=key_arn.decode(),
        key_material_id=key_material_id.decode(), wrapped_key=wrapped_key,
        header=sealed[:pos], nonce=sealed[pos:pos + 12], ciphertext=sealed[pos + 12:],
    )


MATERIAL_128 = "".join(chr(0x21 + i % 94) for i in range(128))  # '!' .. '~', no space

CASES_V2 = [
    dict(
        description="strict scope, KMS-wrapped data key, text value",
        scope="strict", algorithm="kms-symmetric", wrapped_at=1764000000,
        key_arn="arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        key_material_id="0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdeffedcba9876543210",
        wrapped_key=bytes(range(1, 185)), data_key=bytes(range(32)), nonce=bytes(range(0xA0, 0xAC)),
        namespace="prod", name="db-credentials", item="password",
        plaintext=b"correct horse battery staple",
    ),
    dict(
        description="namespace scope, RSA-OAEP-SHA256-wrapped data key, no key material id, empty value",
        scope="namespace", algorithm="rsaes-oaep-sha256", wrapped_at=0,
        key_arn="arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef",
        key_material_id="",
        wrapped_key=bytes([0x5A]) * 256, data_key=bytes([0xFF]) * 32, nonce=bytes(12),
        namespace="payments", name="ignored-by-scope", item="tls.key",
        plaintext=b"",
    ),
    dict(
        description="cluster scope, every byte value, maximal wrap time, 128-character key material id",
        scope="cluster", algorithm="kms-symmetric", wrapped_at=2**64 - 1,
        key_arn="arn:aws-cn:kms:cn-north-1:111122223333:key/abc",
        key_material_id=MATERIAL_128,
        wrapped_key=b"\x00", data_key=bytes(range(100, 132)), nonce=bytes([0xFF]) * 12,
        namespace="ignored", name="ignored", item="blob_1.bin",
        plaintext=bytes(range(256)),
    ),
    dict(
        description="strict scope, longest namespace (63), name (253) and item (253)",
        scope="strict", algorithm="kms-symmetric", wrapped_at=1700000000,
        key_arn="arn:aws:kms:ap-southeast-2:444455556666:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        key_material_id="aa" * 32,
        wrapped_key=bytes(range(7, 7 + 170)), data_key=bytes(range(0x40, 0x60)), nonce=bytes(range(1, 13)),
        namespace="a" * 63, name=("b" * 63 + ".") * 3 + "c" * 61,
        item="item" + ("-A._z0" * 42)[:249],
        plaintext=b"x",
    ),
]

REWRAPS_V2 = [
    dict(
        description="strict-scope value re-wrapped under another key of the same account",
        original=0, wrapped_at=1795536000,
        key_arn="arn:aws:kms:eu-west-1:111122223333:key/9876fedc-ba98-7654-3210-fedcba987654",
        key_material_id="c3" * 32,
        wrapped_key=bytes(range(200, 256)) + bytes(range(0, 128)),
    ),
    dict(
        description="cluster-scope value re-wrapped under another key, earlier wrap time",
        original=2, wrapped_at=1,
        key_arn="arn:aws-cn:kms:cn-north-1:111122223333:key/def",
        key_material_id="0123456789abcdef" * 4,
        wrapped_key=bytes([0xEE]) * 184,
    ),
]


def seal_v2(case):
    head = prefix_v2(case["scope"], case["algorithm"]) + wrapping_v2(
        case["wrapped_at"], case["key_arn"], case["key_material_id"], case["wrapped_key"])
    ad = aad_v2(case["scope"], case["algorithm"], case["namespace"], case["name"], case["item"])
    assert len(case["data_key"]) == 32 and len(case["nonce"]) == 12
    sealed = head + case["nonce"] + AESGCM(case["data_key"]).encrypt(case["nonce"], case["plaintext"], ad)
    return head, ad, sealed


def rewrap_v2(sealed, rewrap):
    old = parse_v2(sealed)
    head = sealed[:9] + wrapping_v2(
        rewrap["wrapped_at"], rewrap["key_arn"], rewrap["key_material_id"], rewrap["wrapped_key"])
    return head, head + sealed[len(old["header"]):]


def check_v2(case, sealed, ad):
    got = parse_v2(sealed)
    for field in ("scope", "algorithm", "wrapped_at", "key_arn", "key_material_id", "wrapped_key", "nonce"):
        assert got[field] == case[field], field
    assert AESGCM(case["data_key"]).decrypt(got["nonce"], got["ciphertext"], ad) == case["plaintext"]


def main_v2():
    vectors, sealed_values = [], []
    for case in CASES_V2:
        head, ad, sealed = seal_v2(case)
        check_v2(case, sealed, ad)
        sealed_values.append(sealed)
        vectors.append({
            "description": case["description"],
            "scope": case["scope"],
            "algorithm": case["algorithm"],
            "wrapped_at": case["wrapped_at"],
            "key_arn": case["key_arn"],
            "key_material_id": case["key_material_id"],
            "wrapped_key_hex": case["wrapped_key"].hex(),
            "data_key_hex": case["data_key"].hex(),
            "nonce_hex": case["nonce"].hex(),
            "namespace": case["namespace"],
            "name": case["name"],
            "item": case["item"],
            "plaintext_hex": case["plaintext"].hex(),
            "encryption_context": context_v2(case["scope"], case["namespace"], case["name"]),
            "header_hex": head.hex(),
            "aad_hex": ad.hex(),
            "sealed_base64": base64.b64encode(sealed).decode(),
        })
    rewrapped = []
    for rewrap in REWRAPS_V2:
        case = CASES_V2[rewrap["original"]]
        head, sealed = rewrap_v2(sealed_values[rewrap["original"]], rewrap)
        ad = aad_v2(case["scope"], case["algorithm"], case["namespace"], case["name"], case["item"])
        check_v2({**case, **rewrap}, sealed, ad)
        original = parse_v2(sealed_values[rewrap["original"]])
        assert sealed[len(head):] == original["nonce"] + original["ciphertext"]
        rewrapped.append({
            "description": rewrap["description"],
            "original": rewrap["original"],
            "wrapped_at": rewrap["wrapped_at"],
            "key_arn": rewrap["key_arn"],
            "key_material_id": rewrap["key_material_id"],
            "wrapped_key_hex": rewrap["wrapped_key"].hex(),
            "header_hex": head.hex(),
            "sealed_base64": base64.b64encode(sealed).decode(),
        })
    plain_contexts = [
        {"scope": scope, "namespace": "prod", "name": "db-credentials", "item": "password",
         "encryption_context": context_plain(scope, "prod", "db-credentials", "password")}
        for scope in SCOPES
    ]
    print(json.dumps({
        "format": "kmseal envelope v2",
        "vectors": vectors,
        "rewrapped": rewrapped,
        "plain_contexts": plain_contexts,
    }, indent=2))


if __name__ == "__main__":
    commands = {"v1": main_v1, "v2": main_v2}
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1] not in commands):
        sys.exit("usage: generate.py [v1|v2]")
    commands[sys.argv[1] if len(sys.argv) == 2 else "v1"]()
