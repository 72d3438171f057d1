"""``osteomics node ...``: run the DICOM node and look at what it stored."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from osteomics.radiology.config import NodeConfig, load_node_config
from osteomics.radiology.jobs import NECROSIS
from osteomics.radiology.necrosis_job import (
    RADIOMICS_SEND,
    StudyHandler,
    StudyJobResult,
    StudyWork,
)
from osteomics.radiology.node import RunningNode, echo, serve
from osteomics.radiology.pacs import get_connector, pull
from osteomics.radiology.store import open_index, open_store

if TYPE_CHECKING:
    from osteomics.radiology.radiomics_job import StudyRadiomics

app = typer.Typer(
    help="The DICOM node: receive studies from a PACS, store and index them.",
    no_args_is_help=True,
)

#: The loggers whose INFO lines `node serve` shows: associations, store repairs, jobs, shutdown.
_SERVING_LOGGERS = (
    "osteomics.radiology.node",
    "osteomics.radiology.acceptor",
    "osteomics.radiology.store",
    "osteomics.radiology.jobs",
    "osteomics.radiology.radiomics_job",
    "osteomics.radiology.necrosis_job",
    "osteomics.radiology.pacs",
)

CONFIG_HELP = "The node's node.toml (AE title, port, storage, allow-list, remotes)."


def _config(path: Path) -> NodeConfig:
    return load_node_config(path)


def _iso(seconds: float) -> str:
    """A POSIX time as ISO 8601 local time with its UTC offset (``2026-11-30T15:45:35+01:00``)."""
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def failed_jobs(storage: Path, limit: int = 20) -> list[dict[str, Any]]:
    """The latest failed jobs (and jobs queued again after a failure) with their reason, read
    from the store's index without changing it."""
    db = open_index(storage, create=False)
    try:
        if not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).fetchone():
            return []
        rows = db.execute(
            "SELECT id, kind, study_uid, state, attempts, error FROM jobs"
            " WHERE error IS NOT NULL AND state IN ('failed', 'queued')"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    finally:
        db.close()
    keys = ("id", "kind", "study_uid", "state", "attempts", "error")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _unserved_jobs_note(cfg: NodeConfig, jobs: dict[str, int]) -> str | None:
    """A note when jobs wait and no worker of this node.toml would run them."""
    queued = jobs.get("queued", 0)
    if not queued or cfg.radiomics.enabled:
        return None
    return (
        f"note: {queued} job(s) queued and no worker is enabled to run them: "
        f"study_complete jobs are run by the radiomics worker; set [radiomics] enabled = true "
        f"in {cfg.config_path or 'node.toml'} and restart `osteomics node serve`"
    )


@app.command("serve")
def serve_command(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
) -> None:
    """Receive studies (C-STORE) and answer C-ECHO until Ctrl-C or SIGTERM.

    Logs associations (AE title, address, instances stored), jobs and shutdown on stderr,
    never patient data.
    """
    cfg = _config(config)
    # A server says what it does: the node's own INFO lines are shown without -v.
    for name in _SERVING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)

    def ready(node: RunningNode) -> None:
        typer.echo(
            f"node {cfg.ae_title} listening on {cfg.host}:{node.port}, storing in {cfg.storage} "
            f"({len(cfg.allow)} allowed peer(s)); Ctrl-C stops it",
            err=True,
        )

    serve(cfg, ready=ready, on_radiomics=_fusion_scorer(cfg), handlers=job_handlers(cfg))


def job_handlers(cfg: NodeConfig) -> dict[str, StudyHandler]:
    """The work of the node's study jobs, from the rooms the radiology room may not import:
    ``necrosis`` with ``[necrosis] enabled`` (the pathology room scores the study's slides,
    the DICOM exporter writes SR + SEG), ``radiomics_send`` with ``[radiomics] enabled`` and
    ``[results] send_to`` (the radiomics table exported as TID 1500 SR)."""
    handlers: dict[str, StudyHandler] = {}
    if cfg.necrosis.enabled:
        from osteomics.cli.study_necrosis import necrosis_handler

        handlers[NECROSIS] = necrosis_handler(cfg)
    if cfg.radiomics.enabled and cfg.results.send_to is not None:
        handlers[RADIOMICS_SEND] = _radiomics_sr
    return handlers


def _radiomics_sr(work: StudyWork) -> StudyJobResult:
    """The ``radiomics_send`` job's work: the study's radiomics table as TID 1500 SR (one per
    ROI) in ``results/radiomics/<StudyUID>/dicom/``."""
    from osteomics.plugins.dicom_export import export_run
    from osteomics.radiology.radiomics_job import TABLE_NAME

    report = export_run(work.out_dir / TABLE_NAME, work.out_dir / "dicom")
    files = tuple(Path(o.path) for o in report.objects)
    return StudyJobResult(work.study_uid, work.out_dir, files, f"{len(files)} radiomics SR(s)")


def _fusion_scorer(cfg: NodeConfig) -> Callable[[StudyRadiomics], None] | None:
    """With ``[fusion]`` in node.toml: score each study's radiomics with the signature and
    write ``signature.csv`` (and its provenance) next to the study's radiomics table."""
    if cfg.fusion.signature is None:
        return None
    from osteomics.fusion.signature import read_signature, score_study

    signature = read_signature(cfg.fusion.signature)
    log = logging.getLogger("osteomics.radiology.node")
    log.info("fusion: studies are scored with %s", cfg.fusion.signature)

    def score(result: StudyRadiomics) -> None:
        if result.table is None:
            return
        out = score_study(
            signature,
            result.table,
            cfg.fusion.tables,
            result.table.with_name("signature.csv"),
            cfg.fusion.model,
        )
        if out is None:
            log.info("fusion: study %s not scored: a block has no row for its patient yet",
                     result.study_uid)  # fmt: skip
        else:
            log.info("fusion: study %s scored -> %s", result.study_uid, out)

    return score


@app.command("echo")
def echo_command(
    remote: str = typer.Argument(..., help="A remote of node.toml ([remotes.NAME])."),
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the remote."),
) -> None:
    """C-ECHO a configured remote (a DICOMweb remote: a QIDO-RS study search with limit 1);
    exit code 1 when it does not answer Success."""
    cfg = _config(config)
    target = cfg.remote(remote)
    if target.protocol == "dicomweb":
        web: Any = get_connector(cfg, "dicomweb", timeout_s=timeout)
        elapsed_ms = web.echo(target)
        typer.echo(f"{remote}: QIDO-RS answered in {elapsed_ms:.1f} ms")
        return
    result = echo(cfg, target, timeout_s=timeout)
    if not result.ok:
        typer.secho(f"{remote}: C-ECHO status 0x{result.status:04X}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{remote}: C-ECHO Success in {result.elapsed_ms:.1f} ms")


@app.command("status")
def status_command(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Counts of patients, studies, series, instances and jobs (by state) in the store."""
    cfg = _config(config)
    with open_store(cfg.storage, mode="read") as store:  # never creates a store
        status = store.status()
    note = _unserved_jobs_note(cfg, dict(status.jobs))
    failures = failed_jobs(cfg.storage)
    if as_json:
        document = status.to_dict()
        document["failures"] = failures
        typer.echo(json.dumps(document, indent=2))
    else:
        jobs = ", ".join(f"{n} {state}" for state, n in sorted(status.jobs.items())) or "none"
        typer.echo(
            f"{status.patients} patients, {status.studies} studies, {status.series} series, "
            f"{status.instances} instances; jobs: {jobs}"
        )
        for f in failures:
            typer.echo(
                f"job {f['id']} {f['kind']} of study {f['study_uid']} {f['state']} after "
                f"attempt {f['attempts']}: {f['error']}"
            )
    if note is not None:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)


@app.command("ls")
def ls_command(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the studies as JSON."),
) -> None:
    """Studies in the store: patient ID, date, modalities, series and instance counts."""
    cfg = _config(config)
    with open_store(cfg.storage, mode="read") as store:  # never creates a store
        studies = store.studies()
    if as_json:
        rows: list[dict[str, Any]] = []
        for s in studies:
            row = s.to_dict()
            row["last_received"] = _iso(s.last_received)
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    if not studies:
        typer.echo(f"no studies in {cfg.storage}")
        return
    for s in studies:
        typer.echo(
            f"{s.patient_id or '-':<16} {s.study_date or '-':<8} "
            f"{'/'.join(s.modalities) or '-':<16} {s.series:>3} series {s.instances:>6} "
            f"instances  {s.study_uid}"
        )


@app.command("pull")
def pull_command(
    config: Path = typer.Option(..., "--config", help=CONFIG_HELP),
    remote: str = typer.Option(..., "--from", help="A remote of node.toml ([remotes.NAME])."),
    patient_id: str | None = typer.Option(None, "--patient-id", help="Pull this patient."),
    study_uid: str | None = typer.Option(None, "--study-uid", help="Pull this study."),
    connector: str | None = typer.Option(
        None, "--connector", help="PACS connector plugin (default: the remote's protocol)."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for each answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """C-FIND then C-MOVE studies from a remote PACS to this node; needs `node serve` running.

    A DICOMweb remote: QIDO-RS then WADO-RS, handed to the serving node by C-STORE, or
    written into the store when no node serves.

    Exit code 1 when a sub-operation failed or nothing matched.
    """
    cfg = _config(config)
    report = pull(
        cfg,
        remote,
        patient_id=patient_id,
        study_uid=study_uid,
        connector=get_connector(cfg, connector or cfg.remote(remote).protocol, timeout_s=timeout),
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for s in report.studies:
            typer.echo(
                f"{s.match.study_uid}  {'/'.join(s.match.modalities) or '-'}: {s.transfer} "
                f"0x{s.move.status:04X}, {s.move.completed} completed, {s.move.failed} failed, "
                f"{s.move.warning} warning; stored {s.stored_series} series, "
                f"{s.stored_instances} instances"
            )
        typer.echo(
            f"{remote}: {len(report.studies)} studies, {report.series} series, "
            f"{report.instances} instances stored; {report.failed} failed"
        )
    if not report.studies:
        typer.secho(f"{remote}: no study matched", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if not report.ok:
        raise typer.Exit(1)
