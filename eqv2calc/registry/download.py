"""Fetch one file over http(s) or ``file://`` and install it atomically.

The bytes go to a temporary file next to the destination and are moved into place with
:func:`os.replace` only once the transfer is complete and verified (byte count against the
server's ``Content-Length``, the expected size and, when known, the SHA-256 digest). A failed or
interrupted transfer therefore never leaves a truncated file at the destination, and an existing
file there is kept until a verified replacement is ready.

Only the standard library (:mod:`urllib`) and :mod:`tqdm` are used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from eqv2calc.io import atomic_path

__all__ = ["DownloadError", "download_file", "sha256_of"]

_CHUNK = 1 << 20  # bytes read per step


class DownloadError(OSError):
    """A download failed or produced a file that did not verify.

    Attributes:
        url: the URL that was requested.
        dest: the path the file was meant to be installed at.
        status: the HTTP status code, when the server answered with an error.
    """

    def __init__(self, message: str, *, url: str, dest: Path, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.dest = Path(dest)
        self.status = status

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror) tuples
        return str(self.args[0])


def sha256_of(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Return the hexadecimal SHA-256 digest of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class _RedirectKeepingAuthOnSameOrigin(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never forward ``Authorization`` to another origin.

    Hugging Face answers a download request with a redirect to a storage CDN; the access token
    is meant for huggingface.co only.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_origin = urllib.parse.urlsplit(req.full_url)[:2]
            new_origin = urllib.parse.urlsplit(new.full_url)[:2]
            if old_origin != new_origin:
                new.remove_header("Authorization")
                # urllib keeps headers in two dicts; the copy made above uses the regular one
                new.unredirected_hdrs.pop("Authorization", None)
        return new


def _open(url: str, token: str | None, timeout: float):
    headers = {"User-Agent": "eqv2calc (python urllib)"}
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if token and scheme in ("http", "https"):
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_RedirectKeepingAuthOnSameOrigin())
    return opener.open(request, timeout=timeout)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes (incomplete transfer)"
    return f"{type(exc).__name__}: {exc}"


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    token: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    hint: str = "",
) -> Path:
    """Download ``url`` to ``dest``; install the file only when it is complete and verified.

    Args:
        url: ``http://``, ``https://`` or ``file://`` URL.
        dest: final path of the file. Its folder is created if needed.
        expected_size: size in bytes the file must have (skipped when None).
        sha256: hexadecimal SHA-256 the file must have (skipped when None).
        token: bearer token sent as ``Authorization`` to the URL's origin (not to redirects
            that leave it); for Hugging Face gated repositories.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the connection and for each read.
        hint: extra sentence added to error messages (e.g. how to get access).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: the transfer failed, was cut short, or the file did not verify. The
            message names the URL and ``dest``; nothing is left at ``dest`` (a file already
            there is untouched) and the temporary file is removed.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(
            f"Cannot download {url!r}: only http(s):// and file:// URLs are supported.",
            url=url,
            dest=dest,
        )
    expected_sha = sha256.lower() if sha256 else None

    def fail(problem: str, status: int | None = None) -> DownloadError:
        extra = f" {hint.strip()}" if hint.strip() else ""
        return DownloadError(
            f"Download of {url} failed: {problem}.{extra} To install the file by hand, "
            f"download it from {url} and save it as {dest}",
            url=url,
            dest=dest,
            status=status,
        )

    with atomic_path(dest, durable=True, tmp_suffix=".part") as tmp:
        with open(tmp, "wb") as out:
            try:
                response = _open(url, token, timeout)
            except urllib.error.HTTPError as exc:
                raise fail(_reason(exc), status=exc.code) from exc
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                raise fail(_reason(exc)) from exc
            with response:
                length_header = response.headers.get("Content-Length")
                announced = (
                    int(length_header) if length_header and length_header.isdigit() else None
                )
                total = announced if announced is not None else expected_size
                digest = hashlib.sha256()
                received = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    try:
                        while block := response.read(_CHUNK):
                            out.write(block)
                            digest.update(block)
                            received += len(block)
                            bar.update(len(block))
                    except (OSError, http.client.HTTPException) as exc:
                        raise fail(f"{_reason(exc)} after {received} bytes") from exc
        if announced is not None and received != announced:
            raise fail(f"incomplete transfer: received {received} of {announced} bytes")
        if expected_size is not None and received != expected_size:
            raise fail(f"size mismatch: got {received} bytes, the model card says {expected_size}")
        if expected_sha is not None and digest.hexdigest() != expected_sha:
            raise fail(
                f"SHA-256 mismatch: got {digest.hexdigest()}, the model card says {expected_sha}"
            )
    return dest
