"""A model field that stores a secret encrypted (see `datasources.crypto`)."""

from __future__ import annotations

from django.db import models

from . import crypto


class Secret(str):
    """A decrypted secret whose repr never shows the value (so logs and tracebacks stay clean)."""

    def __repr__(self) -> str:
        return "Secret('********')"


def reveal(stored: str | None) -> Secret:
    """The plaintext of a field value: an envelope loaded from the database, or a value just set."""
    if not stored:
        return Secret("")
    if stored.startswith(crypto.ENVELOPE_PREFIX):
        return Secret(crypto.decrypt(stored))
    return Secret(stored)


class EncryptedTextField(models.TextField):
    """Keeps an `enc:v1:` envelope in the database.

    The attribute holds the envelope as loaded (so listing objects never needs a key); assigning
    plaintext encrypts it on save; `reveal()` decrypts, failing closed with an error that names
    the missing key id.
    """

    def get_prep_value(self, value):
        if value is None or value == "":
            return value
        value = str(value)
        if value.startswith(crypto.ENVELOPE_PREFIX):
            return value
        return crypto.encrypt(value)
