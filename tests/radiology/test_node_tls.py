"""TLS: a CA, a node certificate and a client certificate made here with the openssl CLI; the
node runs with [node.tls] and DCMTK's ``storescu +tls`` stores through it; clients without TLS
or without a certificate from the CA are refused."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_node_dcmtk import NODE_AE, Dcmtk, sop_uid

from osteomics.radiology.node import RunningNode


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _make_pki(folder: Path) -> Path:
    """ca.crt/ca.key, node.crt/node.key (CN localhost, IP 127.0.0.1), client.crt/client.key,
    and other-ca.crt with a client certificate other.crt/other.key it signed."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is missing (apt-get install openssl)")
    folder.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=osteomics test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            cwd=folder,
        )  # fmt: skip
    for name, ca, subject, ext in (
        ("node", "ca", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "ca", "/CN=storescu", "extendedKeyUsage=clientAuth"),
        ("other", "other-ca", "/CN=intruder", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
        )  # fmt: skip
        (folder / f"{name}.ext").write_text(ext + "\n", encoding="utf-8")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=folder,
        )  # fmt: skip
    return folder


def test_storescu_over_tls_is_stored_and_clients_without_tls_are_refused(
    tmp_path: Path,
    node_factory: Callable[..., RunningNode],
    dcmtk: Dcmtk,
    sts001_ct: list[Path],
) -> None:
    pki = _make_pki(tmp_path / "pki")
    tls = (
        f'\n[node.tls]\ncertificate = "{pki / "node.crt"}"\nkey = "{pki / "node.key"}"\n'
        f'ca = "{pki / "ca.crt"}"\n'
    )
    node = node_factory((("STORESCU", "127.0.0.1"),), extra=tls)
    assert node.config.tls is not None
    check = dcmtk("storescu", "--help")
    assert "+tls" in check.stdout + check.stderr, "this DCMTK build has no TLS"

    def send(*options: str | Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
        return dcmtk(
            "storescu", "-v", *options, "-aet", "STORESCU", "-aec", NODE_AE,
            "127.0.0.1", node.port, *files, timeout=60,
        )  # fmt: skip

    # 1. plain TCP: the TLS handshake fails, the association never starts
    plain = send(files=sts001_ct[:1])
    assert plain.returncode != 0
    assert "Association Request Failed" in plain.stdout + plain.stderr
    # 2. TLS without a client certificate
    anonymous = send("+tla", "+cf", pki / "ca.crt", files=sts001_ct[:1])
    assert anonymous.returncode != 0
    # 3. TLS with a certificate from another CA
    stranger = send(
        "+tls", pki / "other.key", pki / "other.crt", "+cf", pki / "ca.crt", files=sts001_ct[:1]
    )
    assert stranger.returncode != 0
    assert node.store.status().instances == 0

    # 4. TLS with a client certificate from our CA, verifying the node's certificate, while a
    #    silent TCP connection is open (it must not hold up the handshake of others)
    silent = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    files = sts001_ct[:10]
    good = send("+tls", pki / "client.key", pki / "client.crt", "+cf", pki / "ca.crt", files=files)
    silent.close()
    output = good.stdout + good.stderr
    assert good.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(files)
    assert {r.attributes.sop_instance_uid for r in node.store.instances()} == {
        sop_uid(p) for p in files
    }
    # and the node keeps serving TLS after the refused attempts
    assert node.store.status().instances == len(files)
