"""Secrets at rest: a versioned envelope `enc:v1:<key id>:<fernet token>` under keys from settings.

Keys come from `RSYNC_ENCRYPTION_KEYS` as `id=key` pairs; the first encrypts, all decrypt. The key
id in the envelope lets decryption name exactly which key is missing instead of failing vaguely.
Nothing here ever derives a key from `SECRET_KEY`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ENVELOPE_PREFIX = "enc:v1:"


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, Fernet]
    primary_id: str

    def encrypt(self, plaintext: str) -> str:
        token = self.keys[self.primary_id].encrypt(plaintext.encode()).decode()
        return f"{ENVELOPE_PREFIX}{self.primary_id}:{token}"

    def decrypt(self, envelope: str) -> str:
        if not envelope.startswith(ENVELOPE_PREFIX):
            raise SecretDecryptionError("stored secret is not in the enc:v1 envelope format")
        key_id, _, token = envelope[len(ENVELOPE_PREFIX) :].partition(":")
        fernet = self.keys.get(key_id)
        if fernet is None:
            raise SecretDecryptionError(
                f"encryption key {key_id!r} is not configured; add it to RSYNC_ENCRYPTION_KEYS"
            )
        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretDecryptionError(f"secret does not decrypt under key {key_id!r}") from exc

    @staticmethod
    def key_id_of(envelope: str) -> str:
        return envelope[len(ENVELOPE_PREFIX) :].partition(":")[0]


def _dev_key_entry() -> str:
    """DEBUG only: a development key kept under RUN_DIR, created on first use."""
    path = settings.RUN_DIR / "dev-encryption-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"dev={Fernet.generate_key().decode()}\n")
    return path.read_text().strip()


def parse_key_entries(entries: list[str]) -> Keyring:
    keys: dict[str, Fernet] = {}
    order: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        key_id, sep, key = entry.partition("=")
        if not sep or not key_id or ":" in key_id:
            raise ImproperlyConfigured(
                "RSYNC_ENCRYPTION_KEYS entries look like 'id=fernet-key' (id without ':')"
            )
        try:
            keys[key_id] = Fernet(key.encode())
        except ValueError as exc:
            raise ImproperlyConfigured(f"encryption key {key_id!r} is not a valid Fernet key") from exc
        order.append(key_id)
    if not order:
        raise ImproperlyConfigured("no encryption keys configured (RSYNC_ENCRYPTION_KEYS)")
    return Keyring(keys=keys, primary_id=order[0])


@functools.cache
def _keyring_for(entries: tuple[str, ...]) -> Keyring:
    return parse_key_entries(list(entries))


def keyring() -> Keyring:
    entries = list(settings.RSYNC_ENCRYPTION_KEYS) or [_dev_key_entry()]
    return _keyring_for(tuple(entries))


def encrypt(plaintext: str) -> str:
    return keyring().encrypt(plaintext)


def decrypt(envelope: str) -> str:
    return keyring().decrypt(envelope)
