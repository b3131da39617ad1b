"""`abl dashboard`: optuna-dashboard on a study's Optuna storage, the ledger of its trials
(SQLite, PostgreSQL or the journal file of the Slurm launcher), served on loopback unless told
otherwise, as `abl ui` serves MLflow."""

from __future__ import annotations

import socket
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.storages import BaseStorage
from sqlalchemy.engine import make_url

from db.engine import mask_url
from model.errors import AblError
from orchestrator.ledger import JOURNAL, open_storage

if TYPE_CHECKING:
    from orchestrator.spec import StudySpec


def open_ledger(spec: StudySpec) -> tuple[BaseStorage, int]:
    """The study's Optuna storage and the study's id in it. A storage or study that is not
    there is an AblError (nothing is created: a SQLite or journal file must exist); a URL's
    password never shows."""
    url = spec.optuna_url
    run_first = f"run `abl run {spec.source}` first"
    if url.startswith(JOURNAL) or url.startswith("sqlite"):
        path = url.removeprefix(JOURNAL) if url.startswith(JOURNAL) else _sqlite_path(url)
        if path and Path(path).is_absolute() and not Path(path).is_file():
            raise AblError(
                f"{spec.source}: study {spec.study} has no Optuna ledger yet ({path} does not "
                f"exist); {run_first}"
            )
    else:
        from orchestrator.prepare import check_storage

        check_storage(spec, ("optuna",))  # a server that does not answer: one line, at once
    storage = open_storage(url)
    try:
        return storage, storage.get_study_id_from_name(spec.study)
    except KeyError:
        raise AblError(
            f"{spec.source}: study {spec.study} is not in the Optuna storage "
            f"{mask_url(url)}; {run_first}, or check `study:` and `storage.optuna`"
        ) from None


def _sqlite_path(url: str) -> str | None:
    try:
        database = make_url(url).database
    except Exception:  # unparsable: open_storage says so
        return None
    return str(Path(database).expanduser().absolute()) if database else None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the browser's requests in parallel; none keeps Ctrl-C waiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # no line per request


READS = frozenset({"GET", "HEAD", "OPTIONS"})


def read_only(app):  # noqa: ANN001, ANN201
    """The dashboard without its writes: its page can rename or delete the study and mark
    trials complete or failed in the ledger, and a trial marked complete there never runs
    (nor has results). Any request but a read gets 403."""

    def guarded(environ, start_response):  # noqa: ANN001, ANN202
        if environ.get("REQUEST_METHOD", "GET").upper() in READS:
            return app(environ, start_response)
        body = b'{"reason": "read-only: abl dashboard --writable allows changes to the ledger"}'
        start_response(
            "403 Forbidden",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded


def listen(storage: BaseStorage, host: str, port: int, writable: bool = False) -> WSGIServer:
    """optuna-dashboard's WSGI app on a threaded server bound to host:port (not yet serving);
    read-only unless `writable`."""
    from optuna_dashboard import wsgi

    server_class = _Server6 if ":" in host else _Server
    app = wsgi(storage) if writable else read_only(wsgi(storage))
    try:
        return make_server(host, port, app, server_class, _Quiet)
    except OSError as e:
        raise _cannot_listen(host, port, e) from None


def check_free(host: str, port: int) -> None:
    """host:port can be listened on now (a server another process starts next, as `abl ui`
    starts MLflow's): else the AblError `listen` gives."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            s.bind(address)
    except OSError as e:
        raise _cannot_listen(host, port, e) from None


def _cannot_listen(host: str, port: int, e: OSError) -> AblError:
    return AblError(
        f"--host {host} --port {port}: cannot listen there "
        f"({e.strerror or type(e).__name__}); choose another --port or --host"
    )


def url(host: str, port: int, study_id: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"
