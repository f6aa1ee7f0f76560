"""Why a connection to an etcd endpoint failed, in one phrase that names the endpoint: the part of
an error message a user acts on ("cannot resolve host h", "connection refused by h:2379")."""

from __future__ import annotations

import re
import socket
import ssl

import requests


def os_error(exc: BaseException | None) -> OSError | None:
    """The socket-level error under urllib3's and requests' wrappers (``reason``, ``from`` chains).
    requests' exceptions are ``OSError``s themselves, so they are looked through, not returned."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
            return exc
        inner = getattr(exc, "reason", None) or (exc.args[0] if exc.args else None)
        exc = inner if isinstance(inner, BaseException) else exc.__cause__ or exc.__context__
    return None


def timed_out(exc: BaseException) -> bool:
    """Whether a failed exchange waited for an answer in vain (rather than being refused)."""
    return isinstance(exc, requests.exceptions.Timeout) or isinstance(os_error(exc), TimeoutError)


def reason(exc: OSError, where: str, timeout: float, *, connecting: bool) -> str:
    """``exc`` from a connection to ``where`` (host:port), given an attempt ``timeout``."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host_of(where)}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer within {round(timeout, 2):g} s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if connecting:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"connection to {where} lost: {exc}"


def host_of(where: str) -> str:
    return where.rpartition(":")[0].removeprefix("[").removesuffix("]")


def tls_cause(exc: OSError) -> str:
    """Why a TLS handshake failed. A plain-http etcd closes the connection on a TLS hello."""
    plain = "is it plain http? then use http://"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError | BrokenPipeError):
        return f"the server closed the connection mid-handshake ({plain})"
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        return f"the server does not answer in TLS ({plain})"
    # "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:1006)": the middle.
    text = re.sub(r"^\[SSL: \w+\] | \(_ssl\.c:\d+\)$", "", str(exc))
    if isinstance(exc, ssl.SSLError) and "alert" in text and "certificate" in text:
        return f"the server refused: {text} (does it want a client certificate? give cert and key)"
    return text


def serves_tls(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` completes (or refuses with a TLS alert) a TLS handshake that verifies
    nothing: told apart from a plain server, which closes on a TLS hello."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            probe.wrap_socket(sock, server_hostname=host),
        ):
            return True
    except ssl.SSLError as exc:  # an alert (no client certificate ...) is TLS speaking
        return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError) and (
            exc.reason != "WRONG_VERSION_NUMBER"
        )
    except OSError:
        return False
