"""Download one file safely: time-outs, retries with backoff, mirror fallback, size cap,
a progress bar, and a `.part` file that is renamed into place only once verified.

Kept free of any knowledge of IDX or Fashion-MNIST: the caller passes a `verify` function.
"""
import contextvars
import functools
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["DownloadError", "download", "BACKOFF_SECONDS", "CHUNK_BYTES", "MIN_BYTES_PER_SECOND"]

BACKOFF_SECONDS = 1.0   # first wait between two attempts on the same URL; doubles each time
CHUNK_BYTES = 1 << 16
# The slowest transfer accepted, averaged over each `timeout` seconds. The read time-out alone
# bounds only the wait for the next byte, so a server dripping one byte every few seconds
# would otherwise hold a download open for days.
MIN_BYTES_PER_SECOND = 4096


class DownloadError(OSError):
    """No URL gave a complete, verified file. The message lists every URL and why it failed."""


class _GiveUpOnURL(Exception):
    """A failure that retrying the same URL will not fix (404, too large, bad content)."""


class _TransientError(Exception):
    """A failure worth retrying on the same URL (5xx, 429, a body shorter than announced)."""


def download(urls, dest, *, verify=None, max_bytes, timeout=30.0, retries=3, backoff=None,
             progress=None, desc=None, min_rate=None):
    """Fetch the first URL of `urls` that works into `dest` and return what `verify` returned.

    urls:     URLs tried in order; each is tried up to `retries` times for failures that may
              pass (connection errors, time-outs, a cut-off body, HTTP 429/5xx), with waits of
              backoff, 2*backoff, ...; a 4xx, an oversize body or content that fails `verify`
              moves on to the next URL at once.
    dest:     final path. The body is streamed into a unique `<dest name>.*.part` file in the
              same directory and renamed over `dest` only after it is complete and verified, so
              `dest` is never a partial file. The `.part` file is removed on every failure.
    verify:   verify(part_path, url) -> result; raises ValueError when the content is wrong
              (its message should name `url`). None accepts any content and returns None.
    max_bytes: the size cap: a body longer than this (announced or streamed) is cut off.
    timeout:  seconds: connecting and receiving the whole head (status line and headers, and
              those of any redirects) must finish within `timeout` of the attempt's start;
              each read of the body waits at most `timeout` for the next bytes.
    min_rate: bytes per second: a body arriving slower than this, averaged over each `timeout`
              seconds, is cut off (and retried like a dropped connection). None uses
              MIN_BYTES_PER_SECOND. So one attempt lasts at most about
              2 * timeout + max_bytes / min_rate seconds, whatever the server does.
    retries:  attempts per URL (at least 1).
    backoff:  seconds before the second attempt; None uses BACKOFF_SECONDS.
    progress: tqdm bar on stderr: True, False, or None (only on a terminal).
    desc:     label of the progress bar (default: dest's name).

    Raises DownloadError (an OSError) listing each URL and its failure when none succeeded;
    the OSError itself when dest's directory cannot be created.
    """
    import requests   # imported here so that `import minicnn` stays fast

    dest = Path(dest)
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    min_rate = MIN_BYTES_PER_SECOND if min_rate is None else min_rate
    # An unwritable destination is not the network's fault: fail now, before any request.
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempts = max(1, retries)
    failures = []
    with requests.Session() as session:
        for scheme in ("http://", "https://"):
            session.mount(scheme, _head_deadline_adapter())
        for url in urls:
            for attempt in range(1, attempts + 1):
                try:
                    return _fetch_once(session, url, dest, verify, max_bytes, timeout, min_rate,
                                       progress, desc or dest.name)
                except _GiveUpOnURL as exc:
                    failures.append(f"{url}: {exc}")
                    break
                except (requests.RequestException, OSError, _TransientError) as exc:
                    failures.append(f"{url} (attempt {attempt}/{attempts}): {_describe(exc)}")
                    if attempt < attempts:
                        time.sleep(backoff * 2 ** (attempt - 1))
    raise DownloadError(f"could not download {dest.name}:\n  "
                        + ("\n  ".join(failures) or "no URL to download it from"))


def _describe(exc):
    """A one-line reason, without the layers requests and urllib3 wrap around it."""
    if isinstance(exc, (_TransientError, _GiveUpOnURL)):
        return str(exc)
    # requests.ConnectionError wraps urllib3's MaxRetryError, whose .reason is the real cause.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if reason is not None:
        exc = reason
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _fetch_once(session, url, dest, verify, max_bytes, timeout, min_rate, progress, desc):
    import requests
    from tqdm import tqdm
    import urllib3

    watchdog = _HeadWatchdog(time.monotonic() + timeout)
    head_too_slow = f"too slow: no complete status line and headers within {timeout:g} s; cut off"
    token = _head_watchdog.set(watchdog)
    try:
        response = session.get(url, stream=True, timeout=(timeout, timeout))
    except requests.RequestException as exc:
        if watchdog.fired:
            raise _TransientError(head_too_slow) from exc
        raise
    finally:
        _head_watchdog.reset(token)
    if watchdog.fired:
        # Cut off mid-head, http.client may still have parsed what came as a (short) answer.
        response.close()
        raise _TransientError(head_too_slow)
    with response:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _TransientError(f"HTTP {status} {response.reason}")
        if status >= 400:
            raise _GiveUpOnURL(f"HTTP {status} {response.reason}")
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        announced = None if encoded else _content_length(response)
        if announced is not None and announced > max_bytes:
            raise _GiveUpOnURL(f"announced {announced:,} bytes, over the {max_bytes:,}-byte cap")

        fd, part = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            received = 0
            with os.fdopen(fd, "wb") as out, tqdm(
                    total=announced, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                    disable=None if progress is None else not progress) as bar:
                window_start, window_bytes = time.monotonic(), 0
                try:
                    # The raw stream keeps the bytes exactly as served (a .gz stays a .gz);
                    # only a transport Content-Encoding is undone.
                    for chunk in _pieces(response.raw, encoded):
                        received += len(chunk)
                        window_bytes += len(chunk)
                        if received > max_bytes:
                            raise _GiveUpOnURL(f"body exceeded the {max_bytes:,}-byte cap; cut off")
                        out.write(chunk)
                        bar.update(len(chunk))
                        elapsed = time.monotonic() - window_start
                        if elapsed >= timeout:
                            if window_bytes < min_rate * elapsed:
                                raise _TransientError(
                                    f"too slow: {window_bytes:,} bytes in {elapsed:.1f} s, under the "
                                    f"{min_rate:,} bytes/s minimum; cut off after {received:,} bytes")
                            window_start, window_bytes = time.monotonic(), 0
                except urllib3.exceptions.HTTPError as exc:
                    # Connection dropped or timed out mid-body.
                    raise _TransientError(f"transfer interrupted after {received:,} bytes "
                                          f"({_describe(exc)})") from exc
            if announced is not None and received != announced:
                raise _TransientError(
                    f"transfer incomplete: {received:,} of {announced:,} bytes")
            if verify is None:
                result = None
            else:
                try:
                    result = verify(part, url)
                except ValueError as exc:
                    raise _GiveUpOnURL(f"{exc}; the download was deleted") from exc
            os.replace(part, dest)
            return result
        finally:
            if os.path.exists(part):
                os.remove(part)


def _pieces(raw, decode):
    """The body in pieces as they arrive. urllib3 2's read1 returns whatever bytes are there,
    so the rate check runs even while a server drips; urllib3 1 only has reads that block
    until a whole chunk is in (its drip is then cut off by the size cap alone)."""
    read1 = getattr(raw, "read1", None)
    if read1 is None:
        yield from raw.stream(CHUNK_BYTES, decode_content=decode)
        return
    while True:
        piece = read1(CHUNK_BYTES, decode_content=decode)
        if not piece:
            return
        yield piece


def _content_length(response):
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# The head's deadline. requests' read time-out is a socket time-out: it bounds each wait for
# a byte, never the total, so a server dripping its status line or an endless list of headers
# one byte at a time is never cut off (http.client's own limits, 64 KiB a line and 100 headers,
# still allow hours). urllib3 offers no total deadline for reading the head, and shrinking the
# socket time-out would need a hook into every recv inside http.client. So a watchdog thread
# shuts the socket down when the deadline passes: shutdown(2) from another thread is
# well-defined and wakes the blocked recv, which then sees the end of the stream, and urllib3
# discards the broken connection. The watchdog is attached where the head is read, in the
# connection's getresponse, through urllib3's documented extension points (a pool's
# ConnectionCls, a PoolManager's pool_classes_by_scheme), the same in urllib3 1.26 and 2.
_head_watchdog = contextvars.ContextVar("minicnn_download_head_watchdog", default=None)


class _HeadWatchdog:
    """Shuts down the socket of a response whose head is not complete by `deadline`
    (time.monotonic() seconds). `fired` tells afterwards whether it did."""

    def __init__(self, deadline):
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()

    def read_head(self, sock, getresponse):
        """getresponse() (which reads the head from `sock`), cut off at the deadline."""
        finished = False

        def cut_off():
            with self._lock:
                if finished:
                    return
                self.fired = True
            try:
                # socket.socket's own shutdown, also for an ssl.SSLSocket: SSLSocket.shutdown
                # would first drop its TLS state under the reading thread's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), cut_off)
        timer.daemon = True
        timer.start()
        try:
            return getresponse()
        finally:
            with self._lock:
                finished = True
            timer.cancel()


class _HeadDeadlineConnection:
    """Mixed into urllib3's connection classes: getresponse under the attempt's watchdog."""

    def getresponse(self, *args, **kwargs):
        read_head = super().getresponse
        watchdog = _head_watchdog.get()
        sock = getattr(self, "sock", None)
        if watchdog is None or not isinstance(sock, socket.socket):
            return read_head(*args, **kwargs)
        return watchdog.read_head(sock, lambda: read_head(*args, **kwargs))


@functools.lru_cache(maxsize=None)
def _head_deadline_pools():
    """{scheme: urllib3 connection pool class} whose connections read the head under the
    watchdog (built on first use: requests and urllib3 are imported only when downloading)."""
    from urllib3 import connection, connectionpool

    class HTTPConnection(_HeadDeadlineConnection, connection.HTTPConnection):
        pass

    class HTTPSConnection(_HeadDeadlineConnection, connection.HTTPSConnection):
        pass

    class HTTPConnectionPool(connectionpool.HTTPConnectionPool):
        ConnectionCls = HTTPConnection

    class HTTPSConnectionPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = HTTPSConnection

    return {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}


def _use_head_deadline_pools(manager):
    """Make a urllib3 PoolManager (or ProxyManager) open its pools with the watchdog. One with
    pools of its own (a SOCKS proxy's) is left as it is: it keeps only the per-read time-out."""
    from urllib3 import connectionpool

    standard = {"http": connectionpool.HTTPConnectionPool,
                "https": connectionpool.HTTPSConnectionPool}
    if dict(manager.pool_classes_by_scheme) == standard:
        manager.pool_classes_by_scheme = _head_deadline_pools()
    return manager


def _head_deadline_adapter():
    """A requests HTTPAdapter whose connections read the head under the watchdog."""
    from requests.adapters import HTTPAdapter

    class HeadDeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            _use_head_deadline_pools(self.poolmanager)

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            return _use_head_deadline_pools(super().proxy_manager_for(proxy, **proxy_kwargs))

    return HeadDeadlineAdapter()
