"""Transport security on real servers: `medsettle certs init` makes a private CA and
institution/center certificates; a front-end that requires client certificates serves a
HIS that presents its institution's, refuses one without (or from another authority), and
refuses a header that speaks for another institution than the certificate; a front-end in
center mode reaches its center over mutual TLS, and the center holds it to its certificate's
institution too."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import settlement_pb2
from server.demo.localserver import LocalServer
from server.security import certs
from server.security.certs import TlsFiles
from tests.harness import INST_A, INST_B, RETIRED, admit, total
from tests.pg import center_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "server.cli", "certs", "init", "--dir", str(d)),
            *("--institution", INST_A, "--institution", INST_B, "--center", "gz"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [
        str(d / f)
        for f in (
            "ca.pem",
            f"{INST_A}.pem",
            f"frontend-{INST_A}.pem",
            f"{INST_B}.pem",
            f"frontend-{INST_B}.pem",
            "center-gz.pem",
        )
    ]
    return d


def files(pki: Path, stem: str) -> TlsFiles:
    return TlsFiles(str(pki / f"{stem}.pem"), str(pki / f"{stem}.key"), str(pki / "ca.pem"))


def tls_flags(pki: Path, stem: str, require: bool = True) -> list[str]:
    f = files(pki, stem)
    flags = ["--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.ca]
    return flags + (["--require-client-cert"] if require else [])


def sdk(
    server: LocalServer, inst: str, creds: grpc.ChannelCredentials, opter: str = "cashier01"
) -> MedsettleClient:
    return MedsettleClient(
        server.target,
        fixmedins_code=inst,
        opter=opter,
        retries=0,
        credentials=creds,
        password=server.demo_password(),
    )


@pytest.fixture
def front(pki: Path, tmp_path: Path) -> Iterator[LocalServer]:
    server = LocalServer(
        tmp_path / "front.db",
        extra=tls_flags(pki, INST_A),
        log=tmp_path / "front.log",
        credentials=files(pki, INST_A).channel_credentials(),
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_certificates_name_the_institution_and_keys_are_private(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((pki / f"{INST_A}.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"urn:medsettle:institution:{INST_A}" in sans.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    # The front-end machine's certificate names the institution and its front-end role.
    fe = x509.load_pem_x509_certificate((pki / f"frontend-{INST_A}.pem").read_bytes())
    fe.verify_directly_issued_by(ca)
    assert fe.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:medsettle:institution:{INST_A}",
        f"urn:medsettle:frontend:{INST_A}",
    ]
    for key in ("ca.key", f"{INST_A}.key", "center-gz.key"):
        assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600
    # A second init keeps the CA: certificates issued before stay valid.
    before = (pki / "ca.pem").read_bytes()
    certs.init(pki, ["H44030100001"], [])
    assert (pki / "ca.pem").read_bytes() == before
    x509.load_pem_x509_certificate(
        (pki / "H44030100001.pem").read_bytes()
    ).verify_directly_issued_by(ca)


def test_mutual_tls_visit_and_institution_from_the_certificate(
    front: LocalServer, pki: Path
) -> None:
    with sdk(front, INST_A, files(pki, INST_A).channel_credentials()) as c:
        c.sign_in()
        mdtrt_id, ls = admit(c, RETIRED, n_lines=10, seed=3)
        done = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True)
        assert done.setlinfo.medfee_sumamt == total(ls)
    # B's header over A's certificate: refused before anything is read or written.
    with sdk(front, INST_B, files(pki, INST_A).channel_credentials()) as c:
        with pytest.raises(MedsettleError) as err:
            c.sign_in()
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert f"is not the institution of the client certificate ({INST_A})" in str(err.value)
    # B with its own certificate is served (as itself).
    with sdk(front, INST_B, files(pki, INST_B).channel_credentials()) as c:
        assert c.sign_in().sign_no


def test_the_institutions_certificate_still_needs_the_operators_password(
    front: LocalServer, pki: Path
) -> None:
    """A HIS certificate speaks for its institution, not for an operator: signing in as the
    institution's security officer over it takes the officer's password like anywhere."""
    creds = files(pki, INST_A).channel_credentials()
    for password in ("", "not-the-password"):
        with sdk(front, INST_A, creds, opter="security01") as c:
            c.password = password
            with pytest.raises(MedsettleError) as err:
                c.sign_in()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.message == "operator or password wrong"
            assert c.sign_no == ""
    with sdk(front, INST_A, creds, opter="security01") as c:
        assert list(c.sign_in().roles) == ["security"]


def test_streamed_upload_is_held_to_the_certificate(front: LocalServer, pki: Path) -> None:
    with sdk(front, INST_A, files(pki, INST_A).channel_credentials()) as c:
        sign_no = c.sign_in().sign_no
        reg = c.register(
            RETIRED.psn_no,
            insutype=310,
            med_type=21,
            begndate=20260615,
            ipt_otp_no="T1",
            dise_codg=["I21.9"],
        )
        stub = c.settlement
        head = settlement_pb2.UploadFeesRequest(mdtrt_id=reg.mdtrt_id)
        head.header.msgid, head.header.opter, head.header.sign_no = "TLS-S1", "x", sign_no
        head.header.fixmedins_code = INST_B
        with pytest.raises(grpc.RpcError) as err:
            stub.StreamFees(iter([head]), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "messages[0].header.fixmedins_code" in (err.value.details() or "")


@pytest.mark.parametrize("how", ["no certificate", "another authority", "plaintext"])
def test_callers_without_a_good_certificate_are_refused(
    front: LocalServer, pki: Path, tmp_path: Path, how: str
) -> None:
    if how == "plaintext":
        ch = grpc.insecure_channel(front.target)
    elif how == "no certificate":
        ch = grpc.secure_channel(
            front.target, grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        )
    else:
        other = tmp_path / "other"
        certs.init(other, [INST_A], [])
        creds = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(),
            (other / f"{INST_A}.key").read_bytes(),
            (other / f"{INST_A}.pem").read_bytes(),
        )
        ch = grpc.secure_channel(front.target, creds)
    with ch, sdk(front, INST_A, grpc.ssl_channel_credentials()) as unused:
        unused.channel.close()
        c = MedsettleClient(front.target, fixmedins_code=INST_A, opter="x", retries=0, channel=ch)
        with pytest.raises(MedsettleError) as err:
            c.sign_in()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.pg
def test_front_end_reaches_its_center_over_mutual_tls(
    pki: Path, pg_dsn: str, tmp_path: Path
) -> None:
    center = center_server(pg_dsn, tmp_path)
    center.extra += tls_flags(pki, "center-gz")
    center.credentials = files(pki, INST_A).channel_credentials()
    center.start()
    fronts = []
    try:
        for stem in (INST_A, INST_B):  # B's front-end will carry A's visits: refused
            f = LocalServer(
                tmp_path / f"front-{stem}.db",
                extra=[
                    *("--mode", "center", "--center-target", f"localhost:{center.port}"),
                    *tls_flags(pki, f"frontend-{stem}", require=False),
                ],
                env={"MEDSETTLE_CENTER_DEADLINE_S": "3"},
                log=tmp_path / f"front-{stem}.log",
                credentials=grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes()),
            ).start()
            fronts.append(f)
        ca_only = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        with sdk(fronts[0], INST_A, ca_only) as c:  # a HIS without a certificate: allowed
            c.sign_in()
            mdtrt_id, ls = admit(c, RETIRED, n_lines=10, seed=4)
            done = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True)
            assert done.setlinfo.setl_id.startswith(f"S{INST_A}01H")  # settled by the center
        with sdk(fronts[1], INST_A, ca_only) as c:
            c.sign_in()
            mdtrt_id, ls = admit(c, RETIRED, n_lines=10, seed=5)
            with pytest.raises(MedsettleError) as err:
                c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for f in fronts:
            f.stop()
        center.stop()
