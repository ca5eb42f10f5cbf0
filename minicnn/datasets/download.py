"""Download one file safely: time-outs, retries with backoff, mirror fallback, size cap,
a progress bar, and a `.part` file that is renamed into place only once verified.

Kept free of any knowledge of IDX or Fashion-MNIST: the caller passes a `verify` function.
"""
import os
import tempfile
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
    timeout:  seconds, for connecting and for each read.
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
    from tqdm import tqdm
    import urllib3

    with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
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
