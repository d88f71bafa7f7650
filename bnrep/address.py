"""Which Ray cluster a command joins, checked before any work: an address that is not a Ray head, a
head that refuses this process's token, are one line (bnrep.config.UsageError), not minutes of Ray's
retries or its 70-line traceback.

    check_address(args.address)        # flags.py, before a stage starts
    join(ray, address, init_kwargs)    # raysession.ray_session

Ray's own modules load here only once an address is given.
"""

from __future__ import annotations

import contextlib
import os
import socket

CONNECT_TIMEOUT_S = 10  # an address that neither accepts nor refuses a connection (a dropped route)


def _running_cluster(given: str = "--address ") -> str | None:
    """HOST:PORT of the Ray cluster `--address auto` finds (Ray's own lookup), UsageError when none
    runs; None when this Ray has no such lookup (ray.init then decides)."""
    from bnrep.config import UsageError

    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise UsageError(f"{given}auto: no running Ray cluster on this machine (start one with `ray start "
                         f"--head`, or leave --address and RAY_ADDRESS unset for a private local Ray)") from None


def check_address(address: str | None) -> None:
    """`--address` / $RAY_ADDRESS names a reachable Ray head, decided by one TCP connection to its
    port (refused at once when nothing listens) and, where a gRPC server answers, one call of Ray's GCS
    client (a head that refuses this process's token), before any work; UsageError (one line) otherwise.
    `auto` (the cluster `ray start` started on this machine) is looked up as Ray does; `local` is left to Ray."""
    from bnrep.config import UsageError

    if address is not None and not address.strip():  # --address "$HEAD" with HEAD unset: not a private Ray
        raise UsageError("--address is empty: give the head's HOST:PORT (as `ray start --head` prints it), or leave "
                         "--address out for a private local Ray")
    given = "--address " if address else "RAY_ADDRESS="  # how the user named it, in each message
    address = address or os.environ.get("RAY_ADDRESS")
    missing = token_missing(cluster=bool(address) and address != "local")
    if missing:
        raise UsageError(missing)
    if address == "auto":  # the cluster `ray start` last started on this machine, if one runs
        address = _running_cluster(given)
    if not address or address == "local":
        return
    if address.startswith("ray://"):  # Ray Client: this machine's driver, the cluster's workers and storage apart
        raise UsageError(f"{given}{address} is a Ray Client address, which bnrep does not use: run bnrep on a "
                         f"node of the cluster with the head's HOST:PORT (as `ray start --head` prints it), or on "
                         f"the head (ray submit, Ray Jobs: README, Cluster)")
    if "://" in address:  # (it passed the connection below, and ray.init then failed with a traceback)
        scheme, _, bare = address.partition("://")
        raise UsageError(f"{given}{address}: a Ray head's address has no scheme: HOST:PORT as `ray start --head` "
                         f"prints it ({bare}?)" + (f"; an {scheme}:// address is the dashboard's, for `ray job "
                                                  f"submit`" if scheme in ("http", "https") else ""))
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{given}{address}: expected HOST:PORT of a Ray head (as `ray start --head` prints it)")
    if not 0 < int(port) < 65536:
        raise UsageError(f"{given}{address}: port {int(port)} is not a TCP port (1-65535); the head's address is "
                         f"HOST:PORT as `ray start --head` prints it")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S) as sock:
            grpc = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or _speaks_http2(sock)
    except OSError as e:
        why = "nothing listens there" if isinstance(e, ConnectionRefusedError) else (
            f"no answer in {CONNECT_TIMEOUT_S} s" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__)
        raise UsageError(f"no Ray cluster at {address} ({why}): check the address (`ray status` on the head "
                         f"shows it), or leave --address and RAY_ADDRESS unset for a private local Ray") from None
    if not grpc:  # Ray would retry it for minutes with a warning every few seconds
        raise UsageError(f"no Ray cluster at {address} (something listens there, but not a Ray head: it does not "
                         f"answer as gRPC does; the dashboard's port is another): check the address (`ray status` "
                         f"on the head shows it)")
    if _refuses_token(address):
        raise UsageError(token_refused(address))


def token_missing(cluster: bool) -> str | None:
    """Why this process has no token where RAY_AUTH_MODE=token asks for one (Ray reads RAY_AUTH_TOKEN, else the
    file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token), or None. A private Ray makes ~/.ray/auth_token when it
    is missing, so `cluster` False asks only that a RAY_AUTH_TOKEN_PATH given be readable; a cluster's head needs
    its own token here (without one Ray's client ended the process with no word)."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token" or os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return None
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not given and not cluster:
        return None
    path = os.path.expanduser(given or "~/.ray/auth_token")
    try:
        with open(path) as f:
            if f.read().strip():
                return None
        why = "is empty"
    except OSError as e:
        why = f"cannot be read ({e.strerror or type(e).__name__})"
    where = f"RAY_AUTH_TOKEN_PATH={given}" if given else path
    env = "empty" if "RAY_AUTH_TOKEN" in os.environ else "unset"
    advice = ("put the cluster's token there, or export RAY_AUTH_TOKEN" if cluster else
              "fix or unset RAY_AUTH_TOKEN_PATH (a private Ray makes ~/.ray/auth_token itself)")
    return f"RAY_AUTH_MODE is token, but this process has no token: {where} {why} and RAY_AUTH_TOKEN is {env}; " \
           f"{advice} (README, Security)"


def token_refused(address: str) -> str:
    """What to set when the head at `address` refuses this process for its token authentication."""
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    if mode.strip().lower() == "token":  # a token it has, but not the cluster's
        source = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN", "").strip() else
                  f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}" if os.environ.get("RAY_AUTH_TOKEN_PATH")
                  else "~/.ray/auth_token")
        return (f"the Ray cluster at {address} uses token authentication and refused this process's token (from "
                f"{source}): give it the cluster's token there (README, Security)")
    return (f"the Ray cluster at {address} uses token authentication and refused this process (RAY_AUTH_MODE is "
            f"{mode}): export RAY_AUTH_MODE=token, with the cluster's token in RAY_AUTH_TOKEN, in the file "
            f"RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token (README, Security)")


def _refuses_token(address: str) -> bool:
    """The head at `address` (a gRPC server, as check_address found) refuses this process's token: one call
    of Ray's own GCS client, answered in milliseconds, where ray.init tries 20 times a second apart."""
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # (another Ray: join says it, after Ray's retries)
        return False
    with held_stderr():  # its C++ client warns of the refusal on file descriptor 2
        try:
            GcsClient(address=address)
        except AuthenticationError:
            return True
        except Exception:  # anything else is ray.init's to meet and say (join)
            return False
    return False


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)  # and an empty SETTINGS frame


def _speaks_http2(sock: socket.socket) -> bool:
    """Whatever listens on `sock` answers HTTP/2's connection preface with a SETTINGS frame, as every gRPC
    server (a Ray head's GCS, a Ray Client server) must; an HTTP/1 server, a database, ... do not."""
    sock.sendall(HTTP2_PREFACE)
    got = b""
    while len(got) < 9:
        try:
            more = sock.recv(9 - len(got))
        except (TimeoutError, OSError):
            return False
        if not more:
            return False
        got += more
    return got[3] == 0x04  # the frame type of the server's first frame


def join(ray, address: str, quiet: dict) -> None:
    """ray.init on the cluster at `address`; a cluster that refuses this process (its token authentication)
    or does not answer as a Ray head is UsageError, one line (Ray raised a ConnectionError whose traceback
    ran to 70 lines)."""
    from bnrep.config import UsageError

    try:
        with held_stderr() as said:  # Ray's C++ client warns once a second while a cluster refuses it (20 lines)
            ray.init(address=address, **quiet)
        os.write(2, said[0])  # joined: Ray's lines, as they were
    except ConnectionError as e:
        chain, c = [], e
        while c is not None and c not in chain:  # (Ray's AuthenticationError hides itself as a context)
            chain.append(c)
            c = c.__cause__ or c.__context__
        if any(type(c).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(c) for c in chain):
            raise UsageError(token_refused(address)) from None
        raise UsageError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def held_stderr():
    """The block's writes to file descriptor 2 (this process's C++ code too) held in a temporary file, and
    appended to the list it yields once the block ends; the caller decides whether they are shown."""
    import sys
    import tempfile

    if sys.stderr:  # (None in a process started without file descriptor 2)
        sys.stderr.flush()
    said = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon's): nothing to hold
        yield said
        said.append(b"")
        return
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield said
        finally:
            if sys.stderr:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            said.append(f.read())
