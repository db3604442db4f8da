"""``autoprune dashboard``: optuna-dashboard serving the study database.

optuna-dashboard (the ``dashboard`` extra) reads the studies straight from the storage, so it
shows every trial's val accuracy and ratios (the named objectives), its params and user
attributes, and the Pareto front. It binds 127.0.0.1 by default: the dashboard can also edit
and delete studies, so exposing it on a network is a choice the user makes with ``--host``.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
from types import FrameType

from autoprune.errors import UserError

INSTALL = "pip install 'autoprune[dashboard]'"


def serve(storage_url: str | None, host: str, port: int) -> int:
    """Serve the studies of ``storage_url`` until Ctrl-C (or SIGTERM); return exit status 0.

    Raises:
        UserError: optuna-dashboard is not installed, the storage cannot be opened, or
            ``host:port`` cannot be bound (in use, privileged, not an address of this machine).
    """
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise UserError(
            f"the dashboard needs optuna-dashboard, which is not installed: {INSTALL}"
        ) from exc
    from autoprune.storage import default_storage_url, open_storage

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port: give one in 1..65535, e.g. 8080")
    storage = open_storage(storage_url)
    _check_bindable(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"optuna-dashboard of {storage_url or default_storage_url()} at http://{shown}:{port}/ "
        "(Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: --host {host} lets other machines reach the dashboard, which can edit "
            "and delete studies",
            file=sys.stderr,
        )
    # Both stop it cleanly; SIGINT is set too because a process started in the background of a
    # shell inherits SIGINT ignored, and Python then installs no Ctrl-C handler of its own.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except KeyboardInterrupt:
        pass  # bottle swallows Ctrl-C itself; this covers one that lands outside its loop
    except OSError as exc:  # bound by another process since the check
        raise _bind_error(host, port, exc) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("dashboard stopped", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the server the way Ctrl-C does: cleanly, with exit status 0."""
    raise KeyboardInterrupt


def _check_bindable(host: str, port: int) -> None:
    """Bind ``host:port`` the way the server will (address reuse on), and let it go again."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(
            f"--host {host} is not a known address ({exc.strerror}): use 127.0.0.1 (the "
            "default), or an address of this machine"
        ) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise _bind_error(host, port, exc) from exc


def _bind_error(host: str, port: int, exc: OSError) -> UserError:
    if exc.errno == errno.EADDRINUSE:
        return UserError(
            f"--port {port}: port {port} on {host} is already in use (another dashboard or "
            "server): stop that process or choose another --port, e.g. --port "
            f"{port + 1 if port < 65535 else 8080}"
        )
    if exc.errno == errno.EACCES:
        return UserError(
            f"--port {port}: binding port {port} needs administrator rights: choose a port "
            "above 1023, e.g. --port 8080"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return UserError(
            f"--host {host} is not an address of this machine: use 127.0.0.1 (the default) "
            "or one of its own addresses"
        )
    return UserError(f"--host {host} --port {port} cannot be bound: {exc.strerror or exc}")
