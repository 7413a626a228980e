"""Security both roles share: transport identity (TLS, mutual TLS, certificates: `certs.py`;
the caller's identity from its certificate: `identity.py`), operator roles (`roles.py`) and
passwords (`passwords.py`), request signatures (`signing.py`, SM3withSM2 or HMAC-SM3 through
`engine_rs`), sealed payloads (`payload.py`) and personal data at rest (`pii.py`), both with
SM4-GCM through pyca/cryptography (clients/sm4gcm.py), the data keys they use
(`datakeys.py`), the tamper-evident audit chain (`audit.py`), and the legacy hospital AES
format (`legacy_aes.py`, for compatibility only)."""
