"""Security: transport identity (TLS, mutual TLS, certificates), message codecs (the legacy
hospital AES format; the national SM2/SM3/SM4 conventions live in the Rust engine), and the
checks that tie a caller to its institution."""
