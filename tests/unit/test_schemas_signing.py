"""Ed25519 identity keys, record signatures, the key ring and ``fedsynth keys``."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import Any

import pytest

from schemas import cli
from schemas.codec import decode, encode
from schemas.errors import (
    BadSignatureError,
    KeyStoreError,
    SchemaError,
    UnknownSenderError,
)
from schemas.keyring import KeyRing, load_public_key
from schemas.registry import default_registry
from schemas.signing import (
    SIGNING_DOMAIN,
    IdentityKey,
    decode_verified,
    encode_signed,
    encode_signed_with_digest,
    sign_record,
    signed_digest,
    unsigned_sha256,
    verify_message,
    verify_record,
)

KEY = IdentityKey.generate()
OTHER = IdentityKey.generate()


def chunk(data: bytes = b"abc", **changes: Any) -> dict[str, Any]:
    record = {
        "message_id": "0b9d7a3c-2f4e-4a61-8d0f-1e2c3b4a5d6e",
        "federation_id": "fed-1",
        "sender": "hungary",
        "created_at": 1_700_000_000_000,
        "signature": b"",
        "payload_id": "p1",
        "payload_schema": "ModelUpdate",
        "index": 0,
        "count": 1,
        "total_size": len(data),
        "sha256": b"\x11" * 32,
        "data": data,
    }
    return {**record, **changes}


def test_sign_and_verify_a_record() -> None:
    signed = sign_record("Chunk", chunk(), KEY)
    assert len(signed["signature"]) == 64
    verify_record("Chunk", signed, KEY.public_key)
    verify_record("Chunk", signed, KEY.public_raw())
    _, back = decode(encode("Chunk", signed))
    verify_record("Chunk", back, KEY.public_pem())


def test_encode_signed_equals_sign_then_encode() -> None:
    record = chunk(b"x" * 5000)
    assert encode_signed("Chunk", record, KEY) == encode("Chunk", sign_record("Chunk", record, KEY))


def test_signature_is_over_the_tagged_digest_of_the_unsigned_body() -> None:
    record = chunk(b"y" * 3000)
    unsigned = encode("Chunk", {**record, "signature": b""})
    digest = signed_digest(unsigned)
    assert digest.startswith(SIGNING_DOMAIN) and len(digest) == len(SIGNING_DOMAIN) + 32
    assert signed_digest(unsigned[:7], unsigned[7:100], unsigned[100:]) == digest
    KEY.public_key.verify(sign_record("Chunk", record, KEY)["signature"], digest)
    # A signature over the body itself (pure Ed25519 without the digest) is refused.
    raw = {**record, "signature": KEY.sign(unsigned)}
    with pytest.raises(BadSignatureError):
        verify_record("Chunk", raw, KEY.public_key)
    with pytest.raises(BadSignatureError):
        verify_message(encode("Chunk", raw), KEY.public_key)


def test_unsigned_sha256_is_the_signed_digest_and_stands_in_for_the_hash() -> None:
    record = chunk(b"z" * 4000)
    data = encode_signed("Chunk", record, KEY)
    unsigned = encode("Chunk", {**record, "signature": b""})
    assert SIGNING_DOMAIN + unsigned_sha256(data) == signed_digest(unsigned)
    assert encode_signed_with_digest("Chunk", record, KEY) == (data, unsigned_sha256(data))
    assert verify_message(data, KEY.public_key, sha256=unsigned_sha256(data)) == "Chunk"
    # A digest of other bytes does not let a message through: the signature is still checked.
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_message(data, KEY.public_key, sha256=bytes(32))
    with pytest.raises(SchemaError, match="envelope"):
        unsigned_sha256(data[:12])


@pytest.mark.parametrize(
    "change",
    [{"data": b"abd"}, {"sender": "cleveland"}, {"created_at": 1_700_000_000_001}],
    ids=["data", "sender", "time"],
)
def test_tampered_record_fails(change: dict[str, Any]) -> None:
    signed = sign_record("Chunk", chunk(), KEY)
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_record("Chunk", {**signed, **change}, KEY.public_key)


def test_wrong_key_missing_and_malformed_signatures_fail() -> None:
    signed = sign_record("Chunk", chunk(), KEY)
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_record("Chunk", signed, OTHER.public_key)
    with pytest.raises(BadSignatureError, match="0 bytes, Ed25519 needs 64"):
        verify_record("Chunk", chunk(), KEY.public_key)
    with pytest.raises(BadSignatureError, match="63 bytes"):
        verify_record("Chunk", {**signed, "signature": signed["signature"][:63]}, KEY.public_key)


def test_signature_binds_the_schema() -> None:
    """The header (schema fingerprint) is signed: relabelling a body as another type fails."""
    signed = sign_record("Chunk", chunk(), KEY)
    ring = KeyRing({"hungary": KEY.public_key})
    data = encode("Chunk", signed)
    assert decode_verified(data, ring) == ("Chunk", signed)
    other = default_registry().by_name("Heartbeat").header
    with pytest.raises(BadSignatureError, match="Heartbeat from 'hungary'"):
        decode_verified(other + data[10:], ring)


def test_decode_verified_with_a_key_ring() -> None:
    ring = KeyRing({"hungary": KEY.public_key})
    data = encode_signed("Chunk", chunk(b"y" * 100), KEY)
    name, record = decode_verified(data, ring)
    assert name == "Chunk" and record["data"] == b"y" * 100
    assert verify_message(data, KEY.public_key) == "Chunk"
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(BadSignatureError, match="Chunk from 'hungary'"):
        decode_verified(tampered, ring)
    with pytest.raises(UnknownSenderError, match="no identity public key for sender 'hungary'"):
        decode_verified(data, KeyRing())
    with pytest.raises(BadSignatureError):
        decode_verified(data, KeyRing({"hungary": OTHER.public_key}))


def test_keys_save_load_and_refuse_overwrite(tmp_path: Path) -> None:
    key_path, pub_path = KEY.save(tmp_path / "keys", "va-long-beach")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert IdentityKey.load(tmp_path / "keys", "va-long-beach").public_raw() == KEY.public_raw()
    assert load_public_key(pub_path.read_bytes()) == KEY.public_key
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        OTHER.save(tmp_path / "keys", "va-long-beach")
    assert IdentityKey.load(tmp_path / "keys", "va-long-beach").public_raw() == KEY.public_raw()
    with pytest.raises(KeyStoreError, match="invalid site name"):
        KEY.save(tmp_path, "../escape")
    with pytest.raises(KeyStoreError, match="cannot read identity key"):
        IdentityKey.load(tmp_path, "nobody")


def test_bad_key_material_is_refused() -> None:
    with pytest.raises(KeyStoreError, match="neither raw 32 bytes nor PEM"):
        load_public_key(b"short")
    with pytest.raises(KeyStoreError, match="not a readable"):
        IdentityKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_key_ring_from_directory(tmp_path: Path) -> None:
    KEY.save(tmp_path, "cleveland")
    OTHER.save(tmp_path, "switzerland")
    ring = KeyRing.from_dir(tmp_path)
    assert ring.senders == ["cleveland", "switzerland"] and len(ring) == 2
    assert ring.get("switzerland") == OTHER.public_key and "cleveland" in ring
    (tmp_path / "broken.pub").write_bytes(b"junk")
    with pytest.raises(KeyStoreError, match="broken.pub"):
        KeyRing.from_dir(tmp_path)
    with pytest.raises(KeyStoreError, match="does not exist"):
        KeyRing.from_dir(tmp_path / "missing")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_new_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["new", "--site", "hungary", "--dir", str(tmp_path)]) == 0
    key = IdentityKey.load(tmp_path, "hungary")
    assert _cli(["new", "--site", "hungary", "--dir", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert _cli(["show", "--site", "hungary", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert cli.public_key_fingerprint(key.public_raw()) in out
    assert key.public_pem().decode().strip() in out
    assert _cli(["show", "--site", "nobody", "--dir", str(tmp_path)]) == 1


def test_cli_default_dir_follows_fedsynth_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path))
    assert cli.default_key_dir() == tmp_path / "keys"
    assert _cli(["new", "--site", "cleveland"]) == 0
    assert (tmp_path / "keys" / "cleveland.key").exists()
    monkeypatch.delenv("FEDSYNTH_HOME")
    assert cli.default_key_dir() == Path(".fedsynth") / "keys"
