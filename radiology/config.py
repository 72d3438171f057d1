"""``node.toml``: the DICOM node's settings, loaded into frozen dataclasses and validated.

Format (names are the contract)::

    [node]
    ae_title = "OSTEOMICS"
    host = "127.0.0.1"
    port = 11112
    storage = "store"                 # relative to the config file
    study_quiet_seconds = 30
    max_pdu_bytes = 262144            # optional: largest PDU we accept
    max_associations = 8              # optional: concurrent associations

    [[node.allow]]                    # calling AEs that may store, query results, echo
    ae_title = "ORTHANC"
    host = "127.0.0.1"                # the peer's IP address as the node sees it

    [node.tls]                        # optional
    certificate = "node.crt"
    key = "node.key"
    ca = "ca.crt"

    [remotes.pacs]                    # a PACS we can echo, query and pull from
    ae_title = "ORTHANC"              # protocol = "dimse" (the default): DIMSE C-FIND/C-MOVE
    host = "127.0.0.1"
    port = 4242

    [remotes.web]                     # a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS)
    protocol = "dicomweb"
    url = "https://pacs.example.org/dicom-web"   # its DICOMweb root
    username = "osteomics"            # optional basic auth: user and password, or
    password_env = "PACS_PASSWORD"    # (better) the environment variable holding it
    # token = "..." / token_env = "PACS_TOKEN"   # or a bearer token (not with a password)
    timeout_s = 60                    # optional: seconds to wait for each answer

    [radiomics]                       # optional: IBSI features of every completed study
    enabled = false                   # true: `node serve` runs the radiomics worker thread
    modalities = ["CT", "MR", "PT"]   # image series to compute on (those the study has)
    roi_pattern = "GTV.*"             # regular expression, full match on ROI/segment names
    poll_seconds = 5                  # how often the worker looks for study_complete jobs
    [radiomics.configs]               # configuration per modality: shipped name or .toml
    CT = "ct"                         # (relative paths resolved against this file)
    MR = "mr"
    PT = "pet"

    [fusion]                          # optional: score each study's radiomics with a signature
    signature = "signatures/lung-mets" # a folder made by `osteomics signature fit`
    model = "fused"                   # optional: which of its models (default: the fused one)
    [fusion.tables]                   # the signature's other blocks: name = table
    pathology = "pathology.csv"

    [necrosis]                        # optional: score the DICOM WSI of every completed study
    enabled = false                   # true: `node serve` runs the necrosis worker thread
    model = "default"                 # registry name or model folder
    workers = 1                       # local Dask worker processes per study
    mpp_override = 0.5                # optional: level-0 µm/px of slides that lack it
    poll_seconds = 5                  # how often the worker looks for necrosis jobs

    [results]                         # optional: where finished results go as DICOM
    send_to = "pacs"                  # a [remotes.NAME]: SR + SEG are C-STOREd (or STOWed) there

Unknown keys are errors (a typo must not silently turn a setting off).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osteomics.radiology.errors import (
    InvalidAETitleError,
    NodeConfigError,
    UnknownRemoteError,
)
from osteomics.radiology.uids import validate_ae_title

DEFAULT_PORT = 11112
DEFAULT_QUIET_SECONDS = 30.0
DEFAULT_MAX_PDU_BYTES = 262_144
DEFAULT_MAX_ASSOCIATIONS = 8
#: Image modalities the radiomics worker can compute on.
RADIOMICS_MODALITIES = ("CT", "MR", "PT")
#: Radiomics configuration per modality unless ``[radiomics.configs]`` says otherwise.
DEFAULT_RADIOMICS_CONFIGS = {"CT": "ct", "MR": "mr", "PT": "pet"}
DEFAULT_ROI_PATTERN = "GTV.*"
DEFAULT_RADIOMICS_POLL_SECONDS = 5.0
DEFAULT_NECROSIS_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE allowed to associate with the node.

    Attributes
    ----------
    ae_title:
        Calling AE title the peer must present (exact match, spaces stripped).
    host:
        IP address the association must come from (compared with the socket's peer address).
    """

    ae_title: str
    host: str


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the node's listening socket (absolute paths).

    Attributes
    ----------
    certificate:
        PEM certificate the node presents.
    key:
        PEM private key of that certificate.
    ca:
        PEM CA bundle that peers' certificates must chain to; ``None``: peers need none.
    """

    certificate: Path
    key: Path
    ca: Path | None


#: ``[remotes.NAME] protocol`` values.
REMOTE_PROTOCOLS = ("dimse", "dicomweb")
_DIMSE_REMOTE_KEYS = {"protocol", "ae_title", "host", "port"}
_DICOMWEB_REMOTE_KEYS = {
    "protocol",
    "url",
    "username",
    "password",
    "password_env",
    "token",
    "token_env",
    "timeout_s",
}


@dataclass(frozen=True)
class RemoteNode:
    """A remote PACS we can echo, query and pull from, and send results to.

    A DIMSE remote (``protocol = "dimse"``, the default) is an AE title, host and port; a
    DICOMweb remote (``protocol = "dicomweb"``) is a URL with optional credentials. Secrets are
    kept out of ``repr`` (and so out of logs and tracebacks); :meth:`credentials` resolves them,
    reading ``password_env``/``token_env`` from the environment when asked.

    Attributes
    ----------
    name:
        The ``NAME`` of ``[remotes.NAME]``, as typed on the command line.
    ae_title, host, port:
        Where a DIMSE remote listens (empty / 0 for a DICOMweb remote).
    protocol:
        ``"dimse"`` or ``"dicomweb"``: which ``pacs_connector`` plugin talks to it.
    url:
        A DICOMweb remote's DICOMweb root (``http://host:8042/dicom-web``).
    username, password:
        HTTP basic authentication of a DICOMweb remote.
    token:
        Bearer token of a DICOMweb remote.
    password_env, token_env:
        Names of environment variables holding the password or token (read at use time).
    timeout_s:
        Seconds to wait for each answer of a DICOMweb remote (None: the command's default).
    """

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    protocol: str = "dimse"
    url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    password_env: str | None = None
    token_env: str | None = None
    timeout_s: float | None = None
    config_path: Path | None = field(default=None, repr=False, compare=False)

    @property
    def address(self) -> str:
        """Where it is, for messages: ``AE at host:port`` or the URL (never a secret)."""
        if self.protocol == "dicomweb":
            return str(self.url)
        return f"{self.ae_title} at {self.host}:{self.port}"

    def credentials(self) -> tuple[str | None, str | None, str | None]:
        """``(username, password, token)`` of a DICOMweb remote, environment variables read.

        Raises
        ------
        NodeConfigError
            ``password_env``/``token_env`` names a variable that is not set (or empty).
        """
        password, token = self.password, self.token
        if self.password_env is not None:
            password = self._env("password_env", self.password_env)
        if self.token_env is not None:
            token = self._env("token_env", self.token_env)
        return self.username, password, token

    def _env(self, key: str, variable: str) -> str:
        import os

        value = os.environ.get(variable)
        if not value:
            raise NodeConfigError(
                f"{self.config_path or 'node.toml'}: remotes.{self.name}.{key} names the "
                f"environment variable {variable}, which is not set; export {variable} before "
                "running osteomics (or give the secret in the file)"
            )
        return value


@dataclass(frozen=True)
class RadiomicsSettings:
    """``[radiomics]``: IBSI features computed on every completed study.

    Attributes
    ----------
    enabled:
        True: ``osteomics node serve`` runs the radiomics worker thread, which claims
        ``study_complete`` jobs.
    modalities:
        Image series modalities to compute on (``CT``, ``MR``, ``PT``), among those a study has.
    roi_pattern:
        Regular expression; every RTSTRUCT ROI or SEG segment whose name matches it in full is
        computed (the STS studies name them ``GTV_Mass_CT``, ``GTV_Mass_PET``...).
    configs:
        Radiomics configuration per modality: a shipped name (``ct``) or an absolute path of a
        ``.toml`` file (relative paths in node.toml are resolved against its folder).
    poll_seconds:
        How often the worker looks for a job when the queue is empty.
    """

    enabled: bool = False
    modalities: tuple[str, ...] = RADIOMICS_MODALITIES
    roi_pattern: str = DEFAULT_ROI_PATTERN
    configs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RADIOMICS_CONFIGS))
    poll_seconds: float = DEFAULT_RADIOMICS_POLL_SECONDS


@dataclass(frozen=True)
class FusionSettings:
    """``[fusion]``: a signature that scores every study whose radiomics job finished.

    The radiology room only carries these paths; the ``osteomics node serve`` command wires
    the fusion room's scoring to the radiomics worker (rooms do not import rooms above them).

    Attributes
    ----------
    signature:
        Folder written by ``osteomics signature fit``, or None (no scoring).
    model:
        Which of the signature's models scores (None: the fused one).
    tables:
        Table of each of the signature's non-radiomics blocks (``pathology = "path.csv"``).
    """

    signature: Path | None = None
    model: str | None = None
    tables: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class NecrosisSettings:
    """``[necrosis]``: necrosis scoring of the DICOM whole-slide images of every completed study.

    The radiology room only carries these settings; ``osteomics node serve`` supplies the
    pathology room's scoring to the node's necrosis worker (rooms do not import each other).

    Attributes
    ----------
    enabled:
        True: a quiet study holding VL Whole Slide Microscopy instances gets a ``necrosis`` job,
        and ``osteomics node serve`` runs the worker that claims them.
    model:
        Registry name (``default``) or model folder (relative paths resolved against node.toml).
    workers:
        Local Dask worker processes per study.
    mpp_override:
        Level-0 µm/px for slides that do not record it, or ``None``.
    poll_seconds:
        How often the worker looks for a job when the queue is empty.
    """

    enabled: bool = False
    model: str = "default"
    workers: int = 1
    mpp_override: float | None = None
    poll_seconds: float = DEFAULT_NECROSIS_POLL_SECONDS


@dataclass(frozen=True)
class ResultsSettings:
    """``[results]``: where the node sends each finished result as DICOM (SR, SEG).

    Attributes
    ----------
    send_to:
        A remote of ``[remotes]``, or ``None`` (results stay on disk only).
    """

    send_to: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``osteomics node`` needs.

    Attributes
    ----------
    ae_title:
        Our AE title; associations that call another title are rejected.
    host:
        Address to listen on (``127.0.0.1`` to stay local).
    port:
        TCP port to listen on.
    storage:
        Storage root, absolute (relative paths in the file are resolved against the file's folder).
    study_quiet_seconds:
        A study with no new instance for this long counts as complete.
    allow:
        Calling AE title + host pairs that may associate; everyone else is rejected.
    tls:
        TLS settings, or ``None`` for plain TCP.
    remotes:
        Remote AEs by name.
    max_pdu_bytes:
        Largest PDU we accept (advertised in the association); 0 would mean unlimited.
    max_associations:
        Concurrent associations; more are rejected (transient, local limit exceeded).
    radiomics:
        ``[radiomics]``: the radiomics worker's settings (off by default).
    fusion:
        ``[fusion]``: the signature that scores each study after its radiomics (off by default).
    necrosis:
        ``[necrosis]``: the necrosis worker's settings (off by default).
    results:
        ``[results]``: where finished results are sent (nowhere by default).
    config_path:
        The file this was loaded from, or ``None``.
    """

    ae_title: str
    host: str
    port: int
    storage: Path
    study_quiet_seconds: float = DEFAULT_QUIET_SECONDS
    allow: tuple[AllowedPeer, ...] = ()
    tls: TlsSettings | None = None
    remotes: dict[str, RemoteNode] = field(default_factory=dict)
    max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    radiomics: RadiomicsSettings = field(default_factory=RadiomicsSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    necrosis: NecrosisSettings = field(default_factory=NecrosisSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    config_path: Path | None = None

    def remote(self, name: str) -> RemoteNode:
        """The remote called ``name``.

        Raises
        ------
        UnknownRemoteError
            Listing the remotes the file does define.
        """
        try:
            return self.remotes[name]
        except KeyError:
            known = ", ".join(sorted(self.remotes)) or "none"
            raise UnknownRemoteError(
                f"{self.config_path or 'node.toml'} defines no remote {name!r} (defined: "
                f"{known}); add a [remotes.{name}] table with ae_title, host and port "
                '(DIMSE), or protocol = "dicomweb" and url (DICOMweb)'
            ) from None

    def is_allowed(self, calling_ae: str, host: str) -> bool:
        """True when ``calling_ae`` from ``host`` is on the allow-list."""
        title = calling_ae.strip()
        return any(p.ae_title == title and _same_host(p.host, host) for p in self.allow)


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate ``node.toml``.

    Raises
    ------
    NodeConfigError
        Naming the file, the key and the fix (missing file, TOML syntax, wrong types, invalid
        AE titles or ports, unknown keys).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeConfigError(
            f"config file {path} does not exist; pass --config with the path of your node.toml"
        ) from None
    except OSError as exc:
        raise NodeConfigError(f"cannot read config file {path} ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NodeConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_node_config(raw, path)


def parse_node_config(raw: dict[str, Any], path: Path) -> NodeConfig:
    """Validate an already-parsed ``node.toml`` (``path`` resolves relative paths and names
    the file in messages)."""
    where = str(path)
    _only_keys(raw, {"node", "remotes", "radiomics", "fusion", "necrosis", "results"}, where, "")
    node = raw.get("node")
    if not isinstance(node, dict):
        raise NodeConfigError(f"{where}: a [node] table is required (ae_title, port, storage)")
    _only_keys(
        node,
        {
            "ae_title",
            "host",
            "port",
            "storage",
            "study_quiet_seconds",
            "allow",
            "tls",
            "max_pdu_bytes",
            "max_associations",
        },
        where,
        "node",
    )
    base = path.resolve().parent
    storage_value = _required(node, "storage", str, where, "node")
    storage = Path(storage_value)
    storage = storage if storage.is_absolute() else base / storage

    allow_raw = node.get("allow", [])
    if not isinstance(allow_raw, list):
        raise NodeConfigError(f"{where}: node.allow must be [[node.allow]] tables")
    allow = []
    for i, entry in enumerate(allow_raw):
        key = f"node.allow[{i}]"
        if not isinstance(entry, dict):
            raise NodeConfigError(f"{where}: {key} must be a table with ae_title and host")
        _only_keys(entry, {"ae_title", "host"}, where, key)
        allow.append(
            AllowedPeer(
                ae_title=_ae(_required(entry, "ae_title", str, where, key), where, key),
                host=_ip(_required(entry, "host", str, where, key), where, key),
            )
        )

    tls = None
    if "tls" in node:
        tls_raw = node["tls"]
        if not isinstance(tls_raw, dict):
            raise NodeConfigError(f"{where}: node.tls must be a table")
        _only_keys(tls_raw, {"certificate", "key", "ca"}, where, "node.tls")
        ca = tls_raw.get("ca")
        tls = TlsSettings(
            certificate=_file(
                base, _required(tls_raw, "certificate", str, where, "node.tls"), where
            ),
            key=_file(base, _required(tls_raw, "key", str, where, "node.tls"), where),
            ca=_file(base, ca, where) if isinstance(ca, str) else None,
        )

    remotes_raw = raw.get("remotes", {})
    if not isinstance(remotes_raw, dict):
        raise NodeConfigError(f"{where}: remotes must be [remotes.NAME] tables")
    remotes = {name: _remote(name, entry, path, where) for name, entry in remotes_raw.items()}

    quiet = node.get("study_quiet_seconds", DEFAULT_QUIET_SECONDS)
    if isinstance(quiet, bool) or not isinstance(quiet, int | float) or quiet <= 0:
        raise NodeConfigError(f"{where}: node.study_quiet_seconds must be a number > 0")
    max_pdu = _optional_int(node, "max_pdu_bytes", DEFAULT_MAX_PDU_BYTES, where)
    if max_pdu != 0 and max_pdu < 4096:
        raise NodeConfigError(
            f"{where}: node.max_pdu_bytes must be 0 (unlimited) or at least 4096, not {max_pdu}"
        )
    max_assoc = _optional_int(node, "max_associations", DEFAULT_MAX_ASSOCIATIONS, where)
    if max_assoc < 1:
        raise NodeConfigError(f"{where}: node.max_associations must be at least 1")

    host = node.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise NodeConfigError(f"{where}: node.host must be an address to listen on, e.g. 127.0.0.1")

    return NodeConfig(
        ae_title=_ae(_required(node, "ae_title", str, where, "node"), where, "node"),
        host=host,
        port=_port(node.get("port", DEFAULT_PORT), where, "node"),
        storage=storage,
        study_quiet_seconds=float(quiet),
        allow=tuple(allow),
        tls=tls,
        remotes=remotes,
        max_pdu_bytes=max_pdu,
        max_associations=max_assoc,
        radiomics=_radiomics(raw.get("radiomics", {}), base, where),
        fusion=_fusion(raw.get("fusion", {}), base, where),
        necrosis=_necrosis(raw.get("necrosis", {}), base, where),
        results=_results(raw.get("results", {}), remotes, where),
        config_path=path,
    )


def _remote(name: str, entry: object, path: Path, where: str) -> RemoteNode:
    """Validate one ``[remotes.NAME]``: a DIMSE remote (ae_title, host, port) or a DICOMweb
    remote (url, optional basic auth or bearer token, secrets possibly from the environment)."""
    key = f"remotes.{name}"
    if not isinstance(entry, dict):
        raise NodeConfigError(
            f"{where}: {key} must be a table with ae_title, host, port (DIMSE) or "
            'protocol = "dicomweb" and url (DICOMweb)'
        )
    protocol = entry.get("protocol", "dimse")
    if protocol not in REMOTE_PROTOCOLS:
        raise NodeConfigError(
            f'{where}: {key}.protocol must be "dimse" or "dicomweb", not {protocol!r}'
        )
    if protocol == "dimse":
        misplaced = sorted(set(entry) & (_DICOMWEB_REMOTE_KEYS - _DIMSE_REMOTE_KEYS))
        if misplaced:
            raise NodeConfigError(
                f'{where}: {key} is a DIMSE remote (protocol "dimse", the default) but sets '
                f'{", ".join(misplaced)}; add protocol = "dicomweb" for a DICOMweb server'
            )
        _only_keys(entry, _DIMSE_REMOTE_KEYS, where, key)
        for required in ("ae_title", "host", "port"):
            if required not in entry:
                raise NodeConfigError(
                    f"{where}: {key}.{required} is required for a DIMSE remote (ae_title, "
                    'host and port); for a DICOMweb server set protocol = "dicomweb" and url'
                )
        return RemoteNode(
            name=name,
            ae_title=_ae(_required(entry, "ae_title", str, where, key), where, key),
            host=_required(entry, "host", str, where, key),
            port=_port(_required(entry, "port", int, where, key), where, key),
            config_path=path,
        )
    misplaced = sorted(set(entry) & (_DIMSE_REMOTE_KEYS - {"protocol"}))
    if misplaced:
        raise NodeConfigError(
            f"{where}: {key} is a DICOMweb remote but sets {', '.join(misplaced)} (DIMSE "
            "settings); give its DICOMweb root as url only, or drop protocol for DIMSE"
        )
    _only_keys(entry, _DICOMWEB_REMOTE_KEYS, where, key)
    if "url" not in entry:
        raise NodeConfigError(
            f"{where}: {key}.url is required for a DICOMweb remote: its DICOMweb root, e.g. "
            '"http://pacs:8042/dicom-web"'
        )
    url = _required(entry, "url", str, where, key)
    if not url.startswith(("http://", "https://")) or len(url) < len("http://x"):
        raise NodeConfigError(
            f"{where}: {key}.url {url!r} must be an http:// or https:// URL (the server's "
            "DICOMweb root, e.g. http://pacs:8042/dicom-web)"
        )
    strings = {}
    for field_name in ("username", "password", "password_env", "token", "token_env"):
        if field_name in entry:
            value = entry[field_name]
            if not isinstance(value, str) or not value:
                raise NodeConfigError(f"{where}: {key}.{field_name} must be a non-empty string")
            strings[field_name] = value
    if "password" in strings and "password_env" in strings:
        raise NodeConfigError(f"{where}: {key}: give password or password_env, not both")
    if "token" in strings and "token_env" in strings:
        raise NodeConfigError(f"{where}: {key}: give token or token_env, not both")
    has_password = "password" in strings or "password_env" in strings
    has_token = "token" in strings or "token_env" in strings
    if has_token and (has_password or "username" in strings):
        raise NodeConfigError(
            f"{where}: {key}: give a token (bearer) or a username and password (basic), not both"
        )
    if has_password != ("username" in strings):
        raise NodeConfigError(
            f"{where}: {key}: basic authentication needs both username and password "
            "(or password_env)"
        )
    timeout = entry.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise NodeConfigError(f"{where}: {key}.timeout_s must be a number of seconds > 0")
    return RemoteNode(
        name=name,
        protocol="dicomweb",
        url=url.rstrip("/"),
        username=strings.get("username"),
        password=strings.get("password"),
        token=strings.get("token"),
        password_env=strings.get("password_env"),
        token_env=strings.get("token_env"),
        timeout_s=float(timeout) if timeout is not None else None,
        config_path=path,
    )


def _radiomics(table: object, base: Path, where: str) -> RadiomicsSettings:
    """Validate ``[radiomics]``; with ``enabled = true`` every configuration is loaded once, so
    that a typo fails at start-up, not on the first study."""
    if not isinstance(table, dict):
        raise NodeConfigError(f"{where}: radiomics must be a [radiomics] table")
    _only_keys(
        table, {"enabled", "modalities", "roi_pattern", "configs", "poll_seconds"}, where,
        "radiomics",
    )  # fmt: skip
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise NodeConfigError(f"{where}: radiomics.enabled must be true or false")
    modalities = table.get("modalities", list(RADIOMICS_MODALITIES))
    if (
        not isinstance(modalities, list)
        or not modalities
        or any(m not in RADIOMICS_MODALITIES for m in modalities)
    ):
        raise NodeConfigError(
            f"{where}: radiomics.modalities must be a non-empty list of "
            f"{', '.join(RADIOMICS_MODALITIES)}, not {modalities!r}"
        )
    pattern = table.get("roi_pattern", DEFAULT_ROI_PATTERN)
    if not isinstance(pattern, str) or not pattern:
        raise NodeConfigError(f"{where}: radiomics.roi_pattern must be a regular expression")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise NodeConfigError(
            f"{where}: radiomics.roi_pattern {pattern!r} is not a valid regular expression ({exc})"
        ) from exc
    configs_raw = table.get("configs", {})
    if not isinstance(configs_raw, dict):
        raise NodeConfigError(f"{where}: radiomics.configs must be a [radiomics.configs] table")
    _only_keys(configs_raw, set(RADIOMICS_MODALITIES), where, "radiomics.configs")
    configs = dict(DEFAULT_RADIOMICS_CONFIGS)
    for modality, value in configs_raw.items():
        if not isinstance(value, str) or not value:
            raise NodeConfigError(
                f"{where}: radiomics.configs.{modality} must be a configuration name or a path"
            )
        if value.endswith(".toml") and not Path(value).is_absolute():
            value = str(base / value)
        configs[modality] = value
    poll = table.get("poll_seconds", DEFAULT_RADIOMICS_POLL_SECONDS)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise NodeConfigError(f"{where}: radiomics.poll_seconds must be a number > 0")
    if enabled:
        from osteomics.radiology.radiomics.config import load_config
        from osteomics.radiology.radiomics.errors import RadiomicsConfigError

        for modality in modalities:
            try:
                load_config(configs[modality])
            except RadiomicsConfigError as exc:
                raise NodeConfigError(f"{where}: radiomics.configs.{modality}: {exc}") from exc
    return RadiomicsSettings(
        enabled=enabled,
        modalities=tuple(modalities),
        roi_pattern=pattern,
        configs=configs,
        poll_seconds=float(poll),
    )


def _fusion(table: object, base: Path, where: str) -> FusionSettings:
    """Validate ``[fusion]``: the signature folder and block tables must exist."""
    if not isinstance(table, dict):
        raise NodeConfigError(f"{where}: fusion must be a [fusion] table")
    if not table:
        return FusionSettings()
    _only_keys(table, {"signature", "model", "tables"}, where, "fusion.")
    signature = _required(table, "signature", str, where, "fusion.")
    folder = Path(signature) if Path(signature).is_absolute() else base / signature
    if not (folder / "signature.json").is_file():
        raise NodeConfigError(
            f"{where}: fusion.signature {folder} holds no signature.json; "
            "give a folder written by `osteomics signature fit`"
        )
    model = table.get("model")
    if model is not None and not isinstance(model, str):
        raise NodeConfigError(f"{where}: fusion.model must be a model name")
    tables_raw = table.get("tables", {})
    if not isinstance(tables_raw, dict):
        raise NodeConfigError(f"{where}: fusion.tables must be a [fusion.tables] table")
    tables = {}
    for name, value in tables_raw.items():
        if not isinstance(value, str):
            raise NodeConfigError(f"{where}: fusion.tables.{name} must be a path")
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise NodeConfigError(f"{where}: fusion.tables.{name}: {path} does not exist")
        tables[name] = path
    return FusionSettings(folder, model, tables)


def _necrosis(table: object, base: Path, where: str) -> NecrosisSettings:
    """Validate ``[necrosis]`` (the model itself is resolved by the pathology room at start)."""
    if not isinstance(table, dict):
        raise NodeConfigError(f"{where}: necrosis must be a [necrosis] table")
    _only_keys(
        table, {"enabled", "model", "workers", "mpp_override", "poll_seconds"}, where, "necrosis"
    )
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise NodeConfigError(f"{where}: necrosis.enabled must be true or false")
    model = table.get("model", "default")
    if not isinstance(model, str) or not model:
        raise NodeConfigError(f"{where}: necrosis.model must be a model name or folder")
    if ("/" in model or model.startswith(".")) and not Path(model).is_absolute():
        model = str(base / model)
    workers = table.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NodeConfigError(f"{where}: necrosis.workers must be an integer >= 1")
    mpp = table.get("mpp_override")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, int | float) or mpp <= 0):
        raise NodeConfigError(f"{where}: necrosis.mpp_override must be a number of µm/px > 0")
    poll = table.get("poll_seconds", DEFAULT_NECROSIS_POLL_SECONDS)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise NodeConfigError(f"{where}: necrosis.poll_seconds must be a number > 0")
    return NecrosisSettings(
        enabled=enabled,
        model=model,
        workers=workers,
        mpp_override=float(mpp) if mpp is not None else None,
        poll_seconds=float(poll),
    )


def _results(table: object, remotes: dict[str, Any], where: str) -> ResultsSettings:
    """Validate ``[results]``: ``send_to`` must name a ``[remotes.NAME]``."""
    if not isinstance(table, dict):
        raise NodeConfigError(f"{where}: results must be a [results] table")
    _only_keys(table, {"send_to"}, where, "results")
    send_to = table.get("send_to")
    if send_to is None:
        return ResultsSettings()
    if not isinstance(send_to, str) or send_to not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise NodeConfigError(
            f"{where}: results.send_to {send_to!r} is not a remote of this file (defined: "
            f"{known}); add a [remotes.{send_to}] table or fix the name"
        )
    return ResultsSettings(send_to=send_to)


def _only_keys(table: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        name = f"{prefix}." if prefix else ""
        raise NodeConfigError(
            f"{where}: unknown setting(s) {', '.join(name + k for k in unknown)}; "
            f"known: {', '.join(sorted(allowed))}"
        )


def _required(table: dict[str, Any], key: str, kind: type, where: str, prefix: str) -> Any:
    if key not in table:
        raise NodeConfigError(f"{where}: {prefix}.{key} is required")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise NodeConfigError(
            f"{where}: {prefix}.{key} must be a {kind.__name__}, not {type(value).__name__}"
        )
    return value


def _optional_int(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise NodeConfigError(f"{where}: node.{key} must be an integer")
    return value


def _ae(value: str, where: str, prefix: str) -> str:
    try:
        return validate_ae_title(value, f"{prefix}.ae_title")
    except InvalidAETitleError as exc:
        raise NodeConfigError(f"{where}: {exc}") from exc


def _port(value: object, where: str, prefix: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise NodeConfigError(f"{where}: {prefix}.port must be an integer 1-65535, not {value!r}")
    return value


def _ip(value: str, where: str, prefix: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise NodeConfigError(
            f"{where}: {prefix}.host {value!r} is not an IP address; the allow-list compares "
            "the address a peer connects from, so write its IP (e.g. 127.0.0.1)"
        ) from None


def _file(base: Path, value: str, where: str) -> Path:
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise NodeConfigError(f"{where}: TLS file {path} does not exist")
    return path


def _same_host(allowed: str, actual: str) -> bool:
    try:
        a = ipaddress.ip_address(allowed)
        b = ipaddress.ip_address(actual)
    except ValueError:
        return False
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    return a == b
