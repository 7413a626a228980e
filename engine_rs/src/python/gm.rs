//! The national cryptography of `gm.rs`: `engine_rs.sm3`, `hmac_sm3`, `sm2_public_key`,
//! `sm2_sign`, `sm2_verify`, `sm4_encrypt_blocks`, `sm4_decrypt_blocks`; and
//! `signed_text`, the canonical string those sign (`signing.rs`). Bytes in, bytes
//! out; a `GmError` is a `CryptoError`. Signing and verifying release the GIL (an SM2
//! verification is a few hundred microseconds of curve arithmetic).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::error::guard;
use crate::{gm, signing};

#[pyfunction]
#[pyo3(name = "sm3")]
pub fn py_sm3<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let digest = guard("gm", "sm3", || gm::sm3(data))?;
    Ok(PyBytes::new(py, &digest))
}

#[pyfunction]
#[pyo3(name = "signed_text")]
pub fn py_signed_text<'py>(
    py: Python<'py>,
    type_name: &str,
    request: &[u8],
    method: &str,
    timestamp_ms: i64,
    nonce: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let text = guard("signing", "signed_text", || {
        signing::canonical(type_name, request, method, timestamp_ms, nonce)
    })?
    .map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &text))
}

#[pyfunction]
#[pyo3(name = "hmac_sm3")]
pub fn py_hmac_sm3<'py>(py: Python<'py>, key: &[u8], data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let mac = guard("gm", "hmac_sm3", || gm::hmac_sm3(key, data))?;
    Ok(PyBytes::new(py, &mac))
}

#[pyfunction]
#[pyo3(name = "sm2_public_key")]
pub fn py_sm2_public_key<'py>(py: Python<'py>, secret: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let public = guard("gm", "sm2_public_key", || gm::sm2_public_key(secret))??;
    Ok(PyBytes::new(py, &public))
}

#[pyfunction]
// The literal default is DEFAULT_UID (stubtest holds the stub to it).
#[pyo3(name = "sm2_sign", signature = (secret, msg, uid = "1234567812345678"))]
pub fn py_sm2_sign<'py>(
    py: Python<'py>,
    secret: &[u8],
    msg: &[u8],
    uid: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let sig = py.detach(|| guard("gm", "sm2_sign", || gm::sm2_sign(secret, uid, msg)))??;
    Ok(PyBytes::new(py, &sig))
}

#[pyfunction]
#[pyo3(name = "sm2_verify", signature = (public, msg, sig, uid = "1234567812345678"))]
pub fn py_sm2_verify(
    py: Python<'_>,
    public: &[u8],
    msg: &[u8],
    sig: &[u8],
    uid: &str,
) -> PyResult<bool> {
    let ok =
        py.detach(|| guard("gm", "sm2_verify", || gm::sm2_verify(public, uid, msg, sig)))??;
    Ok(ok)
}

#[pyfunction]
#[pyo3(name = "sm4_encrypt_blocks")]
pub fn py_sm4_encrypt_blocks<'py>(
    py: Python<'py>,
    key: &[u8],
    data: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let out = guard("gm", "sm4_encrypt_blocks", || {
        gm::sm4_encrypt_blocks(key, data)
    })??;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "sm4_decrypt_blocks")]
pub fn py_sm4_decrypt_blocks<'py>(
    py: Python<'py>,
    key: &[u8],
    data: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let out = guard("gm", "sm4_decrypt_blocks", || {
        gm::sm4_decrypt_blocks(key, data)
    })??;
    Ok(PyBytes::new(py, &out))
}
