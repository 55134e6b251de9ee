"""Message schemas of fedsynth: the ``.avsc`` files and the code that reads and writes them.

Modules: :mod:`schemas.registry` (the ``.avsc`` files, by name and CRC-64-AVRO fingerprint),
:mod:`schemas.codec` (Avro single-object encoding), :mod:`schemas.signing` (Ed25519 identity keys
and signatures), :mod:`schemas.keyring` (public keys by sender), :mod:`schemas.compat` (backward
compatibility of schema changes), :mod:`schemas.errors` (the typed errors), :mod:`schemas.cli`
(``fedsynth keys``). Dataset schemas live in :mod:`schemas.datasets`. Nothing here imports other
fedsynth packages.
"""

__all__: list[str] = []
