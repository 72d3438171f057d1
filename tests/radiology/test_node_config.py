"""node.toml loading: the documented format, relative storage, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteomics.radiology.config import load_node_config
from osteomics.radiology.errors import NodeConfigError, UnknownRemoteError

ISSUE_EXAMPLE = """
[node]
ae_title = "OSTEOMICS"
host = "127.0.0.1"
port = 11112
storage = "store"                 # relative to the config file
study_quiet_seconds = 30

[[node.allow]]
ae_title = "ORTHANC"
host = "127.0.0.1"

[remotes.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_issue_example_loads(tmp_path: Path) -> None:
    config = load_node_config(write(tmp_path, ISSUE_EXAMPLE))
    assert (config.ae_title, config.host, config.port) == ("OSTEOMICS", "127.0.0.1", 11112)
    assert config.storage == (tmp_path / "conf" / "store").resolve()
    assert config.study_quiet_seconds == 30.0
    assert config.tls is None
    assert config.is_allowed("ORTHANC", "127.0.0.1")
    assert config.is_allowed("ORTHANC  ", "::ffff:127.0.0.1")
    assert not config.is_allowed("ORTHANC", "127.0.0.2")
    assert not config.is_allowed("OTHER", "127.0.0.1")
    pacs = config.remote("pacs")
    assert (pacs.ae_title, pacs.host, pacs.port) == ("ORTHANC", "127.0.0.1", 4242)
    with pytest.raises(UnknownRemoteError, match=r"remotes\.nope"):
        config.remote("nope")


def test_tls_paths_are_resolved_and_must_exist(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace(
        "[remotes.pacs]", '[node.tls]\ncertificate = "node.crt"\nkey = "node.key"\n\n[remotes.pacs]'
    )
    path = write(tmp_path, text)
    with pytest.raises(NodeConfigError, match=r"node\.crt"):
        load_node_config(path)
    (path.parent / "node.crt").write_text("x")
    (path.parent / "node.key").write_text("x")
    tls = load_node_config(path).tls
    assert tls is not None and tls.certificate == path.parent / "node.crt" and tls.ca is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('ae_title = "OSTEOMICS"', 'ae_title = "WAY_TOO_LONG_AE_TITLE"'), "longer than 16"),
        (("port = 11112", "port = 70000"), "node.port"),
        (("port = 11112", 'port = "11112"'), "node.port"),
        (('storage = "store"', ""), "node.storage is required"),
        (("study_quiet_seconds = 30", "study_quiet_seconds = 0"), "study_quiet_seconds"),
        (("study_quiet_seconds = 30", "quiet = 30"), "unknown setting"),
        (('host = "127.0.0.1"\n\n[remotes', 'host = "pacs.local"\n\n[remotes'), "IP address"),
        (("[node]", "[nodes]"), "unknown setting"),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE.replace(*change, 1))
    with pytest.raises(NodeConfigError, match=message) as info:
        load_node_config(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="does not exist"):
        load_node_config(tmp_path / "nope.toml")
    with pytest.raises(NodeConfigError, match="not valid TOML"):
        load_node_config(write(tmp_path, "[node\n"))


WEB_REMOTE = """
[remotes.web]
protocol = "dicomweb"
url = "https://pacs.example.org/dicom-web/"
username = "osteomics"
password_env = "OSTEOMICS_TEST_PACS_PASSWORD"
timeout_s = 20
"""


def test_a_dicomweb_remote_loads_with_its_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_node_config(write(tmp_path, ISSUE_EXAMPLE + WEB_REMOTE))
    web = config.remote("web")
    assert (web.protocol, web.url, web.timeout_s) == (
        "dicomweb",
        "https://pacs.example.org/dicom-web",
        20.0,
    )
    assert config.remote("pacs").protocol == "dimse"
    monkeypatch.delenv("OSTEOMICS_TEST_PACS_PASSWORD", raising=False)
    with pytest.raises(NodeConfigError, match="OSTEOMICS_TEST_PACS_PASSWORD, which is not set"):
        web.credentials()
    monkeypatch.setenv("OSTEOMICS_TEST_PACS_PASSWORD", "hunter2-secret")
    assert web.credentials() == ("osteomics", "hunter2-secret", None)


def test_the_repr_of_a_remote_hides_its_password_and_token(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE + WEB_REMOTE.replace(
        'password_env = "OSTEOMICS_TEST_PACS_PASSWORD"', 'password = "hunter2-secret"'
    )
    text += '\n[remotes.bearer]\nprotocol = "dicomweb"\nurl = "http://x/dw"\ntoken = "tok-secret"\n'
    config = load_node_config(write(tmp_path, text))
    shown = repr(config)
    assert "hunter2-secret" not in shown and "tok-secret" not in shown
    assert config.remote("web").credentials() == ("osteomics", "hunter2-secret", None)
    assert config.remote("bearer").credentials() == (None, None, "tok-secret")


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ('protocol = "dicomweb"\n', r"remotes\.bad\.url is required for a DICOMweb remote"),
        ('protocol = "dicomweb"\nurl = "pacs:8042"\n', r"must be an http:// or https:// URL"),
        ('ae_title = "PACS"\nhost = "127.0.0.1"\n', r"remotes\.bad\.port is required for a DIMSE"),
        ('protocol = "dimse"\nurl = "http://x/dw"\n', r"is a DIMSE remote .* sets url"),
        ('protocol = "dicomweb"\nurl = "http://x/dw"\nport = 80\n', "DICOMweb remote but sets"),
        (
            'protocol = "dicomweb"\nurl = "http://x"\ntoken = "t"\nusername = "u"\npassword = "p"',
            "a token .* or a username and password .* not both",
        ),
        (
            'protocol = "dicomweb"\nurl = "http://x"\npassword = "p"\npassword_env = "P"\n',
            "password or password_env, not both",
        ),
        ('protocol = "dicomweb"\nurl = "http://x"\npassword = "p"\n', "needs both username"),
        ('protocol = "dicomweb"\nurl = "http://x"\ntimeout_s = 0\n', r"timeout_s must be"),
        ('protocol = "dicomweb"\nurl = "http://x"\nbearer = "t"\n', r"unknown setting.*bearer"),
        ('protocol = "wado"\nurl = "http://x"\n', r'protocol must be "dimse" or "dicomweb"'),
    ],
)
def test_invalid_remotes_are_named(tmp_path: Path, remote: str, message: str) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE + "\n[remotes.bad]\n" + remote)
    with pytest.raises(NodeConfigError, match=message) as info:
        load_node_config(path)
    assert str(path) in str(info.value)
