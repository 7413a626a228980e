//! Python bindings for the national cryptography in `gm.rs`: `engine_rs.sm3`,
//! `hmac_sm3`, `sm2_public_key`, `sm2_sign`, `sm2_verify`, `sm4_encrypt_blocks`,
//! `sm4_decrypt_blocks`. Bytes in, bytes out; signing and verifying release the GIL (an
//! SM2 verification is a few hundred microseconds of curve arithmetic).

use pyo3::create_exception;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::gm::{self, GmError, DEFAULT_UID};
use crate::python::EngineError;

create_exception!(
    engine_rs,
    CryptoError,
    EngineError,
    "A key, user id or block length the national algorithms cannot take."
);

fn err(e: GmError) -> PyErr {
    CryptoError::new_err(e.to_string())
}

#[pyfunction]
#[pyo3(name = "sm3")]
fn py_sm3<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &gm::sm3(data))
}

#[pyfunction]
#[pyo3(name = "hmac_sm3")]
fn py_hmac_sm3<'py>(py: Python<'py>, key: &[u8], data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &gm::hmac_sm3(key, data))
}

#[pyfunction]
#[pyo3(name = "sm2_public_key")]
fn py_sm2_public_key<'py>(py: Python<'py>, secret: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &gm::sm2_public_key(secret).map_err(err)?))
}

#[pyfunction]
// The literal default is DEFAULT_UID (stubtest holds the stub to it).
#[pyo3(name = "sm2_sign", signature = (secret, msg, uid = "1234567812345678"))]
fn py_sm2_sign<'py>(
    py: Python<'py>,
    secret: &[u8],
    msg: &[u8],
    uid: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let sig = py.detach(|| gm::sm2_sign(secret, uid, msg)).map_err(err)?;
    Ok(PyBytes::new(py, &sig))
}

#[pyfunction]
#[pyo3(name = "sm2_verify", signature = (public, msg, sig, uid = "1234567812345678"))]
fn py_sm2_verify(
    py: Python<'_>,
    public: &[u8],
    msg: &[u8],
    sig: &[u8],
    uid: &str,
) -> PyResult<bool> {
    py.detach(|| gm::sm2_verify(public, uid, msg, sig))
        .map_err(err)
}

#[pyfunction]
#[pyo3(name = "sm4_encrypt_blocks")]
fn py_sm4_encrypt_blocks<'py>(
    py: Python<'py>,
    key: &[u8],
    data: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &gm::sm4_encrypt_blocks(key, data).map_err(err)?,
    ))
}

#[pyfunction]
#[pyo3(name = "sm4_decrypt_blocks")]
fn py_sm4_decrypt_blocks<'py>(
    py: Python<'py>,
    key: &[u8],
    data: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &gm::sm4_decrypt_blocks(key, data).map_err(err)?,
    ))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CryptoError", m.py().get_type::<CryptoError>())?;
    m.add("SM2_DEFAULT_UID", DEFAULT_UID)?;
    m.add_function(wrap_pyfunction!(py_sm3, m)?)?;
    m.add_function(wrap_pyfunction!(py_hmac_sm3, m)?)?;
    m.add_function(wrap_pyfunction!(py_sm2_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(py_sm2_sign, m)?)?;
    m.add_function(wrap_pyfunction!(py_sm2_verify, m)?)?;
    m.add_function(wrap_pyfunction!(py_sm4_encrypt_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(py_sm4_decrypt_blocks, m)?)?;
    Ok(())
}
