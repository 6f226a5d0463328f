"""Whether anything answers at an HTTP server's address: a few seconds' probe before a command depends on it.

MLflow's client retries an HTTP request that cannot connect with exponential backoff
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 7, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` 2: about four minutes), and
Prefect's client retries too, so a command pointed at a dead port used to sit silent for minutes and then
fail as an internal error. A command probes the server once first: only a failure to *connect* (refused,
no such host, no answer to the connection within the timeout) counts as unreachable. Any HTTP answer, an
error status or a login page included, means a server is there, and a server that accepts the connection
but is slow to answer is left to the command (its own timeouts and retries apply), so a slow server keeps
working. Used for the MLflow tracking server (``registry/store.py``) and the Prefect API
(``flows/orchestrator.py``). It uses ``requests``, which MLflow has loaded already: the probe adds no imports
to a registry command (``bench/cli_overhead.py``).
"""
from __future__ import annotations

import re
import time
import warnings

import requests
from urllib3.exceptions import InsecureRequestWarning

PROBE_CONNECT_TIMEOUT_S = 3.0   # per try: a live server on a loaded machine accepts a connection well within it
PROBE_TRIES = 2                 # a second try after a short pause: one dropped SYN is not a dead server
PROBE_PAUSE_S = 0.5


class Unreachable(ConnectionError):
    """A server a command needs does not answer at its address; the message names the address and the fix.

    A user error (the CLI exits 2). Subclassed per server: ``registry.store.StoreUnreachable`` (the MLflow
    tracking server), ``flows.orchestrator.PrefectApiUnreachable``."""


def connect_error(url: str, *, connect_timeout_s: float = PROBE_CONNECT_TIMEOUT_S, tries: int = PROBE_TRIES,
                  pause_s: float = PROBE_PAUSE_S) -> str | None:
    """Why nothing answers at ``url`` (one line, e.g. ``connection refused``), or None when something does.

    ``GET url`` with ``tries`` attempts, each allowed ``connect_timeout_s`` to connect (worst case about
    ``tries * connect_timeout_s + pause_s`` seconds). TLS is not verified: the probe sends no credentials and
    only asks whether a server is there (the command itself verifies as configured). A read timeout, i.e. a
    connection that was accepted, counts as reachable.
    """
    reason = "no answer"
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(pause_s)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureRequestWarning)
                requests.get(url, timeout=(connect_timeout_s, connect_timeout_s), verify=False, allow_redirects=False,
                             stream=True).close()
            return None
        except requests.exceptions.ConnectTimeout:
            reason = f"no connection within {connect_timeout_s:g} s"
        except requests.exceptions.ConnectionError as exc:  # refused, no such host, a proxy that does not answer
            if isinstance(exc.__context__, TimeoutError) or "Read timed out" in str(exc):
                return None  # connected: the server is there, merely slow
            reason = _first_line(exc) or type(exc).__name__
        except (requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError):
            return None  # connected: a server is there, merely slow or odd; the command's own timeouts apply
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            reason = f"not a URL it can reach ({exc})"
            break
    return reason


_ANSWERED: set[str] = set()  # addresses this process found answering: probed once, not on every call


def server_error(url: str) -> str | None:
    """``connect_error(url)``, remembered per process once something answered: a command that reconnects (every
    model load, every ``use_tracking``) pays the probe once. A dead address is probed again each time."""
    if url in _ANSWERED:
        return None
    reason = connect_error(url)
    if reason is None:
        _ANSWERED.add(url)
    return reason


def _first_line(exc: BaseException) -> str:
    """What failed, first line only (``Connection refused``), from the innermost cause that says something."""
    messages = []
    while exc is not None:
        messages.append(str(exc).strip())
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = next((m for m in reversed(messages) if m), "")
    found = re.search(r"(\[Errno -?\d+\] [^'\")]+|Connection refused|Name or service not known|"
                      r"No route to host|Network is unreachable)", " ".join(messages))
    return found.group(1).strip() if found else text.splitlines()[0] if text else ""
