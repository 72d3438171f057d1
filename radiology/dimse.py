"""pynetdicom settings shared by the node and the DIMSE PACS connector.

pynetdicom keeps some settings process-wide (``pynetdicom._config``). Nothing here changes them
at import: :func:`configure_pynetdicom` does, called by
:func:`osteomics.radiology.node.start_node` and by the connector before it associates, so that
importing the node (``osteomics plugins``, ``osteomics --help``) leaves pynetdicom as it was.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import _config as _pynetdicom_config
from pynetdicom import evt
from pynetdicom.association import Association

from osteomics.radiology.config import RemoteNode

log = logging.getLogger(__name__)


def configure_pynetdicom(*, serving: bool = False) -> None:
    """Set pynetdicom's process-wide settings the way osteomics needs them.

    Parameters
    ----------
    serving:
        Also switch off pynetdicom's per-PDU and per-message log lines (the node): pynetdicom
        formats them (decoding every command set) even when nobody listens, 3 % of a C-STORE.
        Association events, warnings and errors are still logged. Read by each new
        association, so call before the node listens.

    Notes
    -----
    Always: no C-FIND/C-MOVE identifiers in pynetdicom's logs (they carry patient IDs and
    names; CONVENTIONS: no patient data in logs).
    """
    _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    if serving:
        _pynetdicom_config.LOG_HANDLER_LEVEL = "none"


def set_tcp_nodelay(event: evt.Event) -> None:
    """Turn Nagle's algorithm off on an association's socket (an ``EVT_CONN_OPEN`` handler).

    pynetdicom does not, and a PDU written in two pieces would otherwise wait for a delayed
    ACK (about 40 ms on loopback).
    """
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. a socket already closed by the peer
            log.debug("cannot set TCP_NODELAY: %s", exc)


def association_failure(
    remote: RemoteNode, our_ae: str, assoc: Association, timeout_s: float, config_path: str
) -> str:
    """Say why an association to ``remote`` was not established, and what to do.

    A rejection is the remote's answer (it does not list our AE, or not from this host). For
    anything else a plain TCP connection tells a refused connection (nothing listens: the
    PACS is not running, or the port is wrong) from no answer (host, routing, firewall) from a
    remote that accepted the connection and then dropped the association.

    Parameters
    ----------
    remote:
        The ``[remotes.NAME]`` that was called.
    our_ae:
        Our calling AE title.
    assoc:
        pynetdicom's association that failed.
    timeout_s:
        Seconds to wait for the TCP probe.
    config_path:
        The node.toml to name in the message.
    """
    who = f"remote {remote.name} ({remote.ae_title} at {remote.host}:{remote.port})"
    lists_us = (
        f"check that it lists our AE {our_ae} with this host "
        f"(remotes.{remote.name} in {config_path})"
    )
    if assoc.is_rejected:
        return f"{who} rejected the association; {lists_us}"
    try:
        with socket.create_connection((remote.host, remote.port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return (
            f"connection refused by {remote.host}:{remote.port} — is the PACS running? "
            f"(remote {remote.name}, {remote.ae_title}; check its port in {config_path})"
        )
    except TimeoutError:
        return (
            f"no answer from {remote.host}:{remote.port} within {timeout_s:g} s (remote "
            f"{remote.name}): check the host and port in {config_path}, and any firewall"
        )
    except OSError as exc:
        return (
            f"cannot connect to {remote.host}:{remote.port} ({exc.strerror or exc}; remote "
            f"{remote.name}): check the host and port in {config_path}"
        )
    return f"{who} accepted the connection but not the association; {lists_us}"


__all__ = ["association_failure", "configure_pynetdicom", "set_tcp_nodelay"]
