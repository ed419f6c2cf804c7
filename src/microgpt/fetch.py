"""`--data https://...`: a data file fetched once into the cache folder (data.cache_folder()) and reused, as
microgpt.py fetches its names file. Quiet: progress goes to a callback, which the CLI turns into a bar.

A download goes to a temporary file that is renamed only once every byte the server announced has arrived;
a failed, refused or broken-off download is a one-line MicrogptError and leaves nothing behind.
"""

import os
import zlib
from urllib.parse import quote, urlparse

from .data import MAX_STREAM_BYTES, cache_folder, check_text, redacted
from .errors import MicrogptError, NotData
from .tempfiles import folder_problem, make_temporary, remove_quietly

URL_SCHEMES = ('http', 'https')
BLOCK_BYTES = 2**20
TIMEOUT_S = 30
URL_CHARACTERS = "/:?#[]@!$&'()*+,;=%~"  # kept as they are in a requested address (RFC 3986's reserved, and %)


def is_url(path):
    """Whether `path` is an http(s) address; a malformed one ('http://[::1/x') is an error, not a file name."""
    try:  # 'http:x.txt' is a file's name: an address has '//' after its scheme
        return urlparse(path).scheme in URL_SCHEMES and path.split(':', 1)[1].startswith('//')
    except ValueError as e:
        if path.split(':', 1)[0].lower() not in URL_SCHEMES:
            return False
        raise MicrogptError(f"{redacted(path)}: not a valid web address ({e}); check it, or download the file and "
                            f"give its path") from None


def local_path(path, progress=None):
    """A data argument as a local file: an http(s) URL's download (fetched on first use, then the cached copy), any
    other path as it is."""
    return fetch(path, progress=progress) if is_url(path) else path


def download_path(url, cache_dir=None):
    """Where the download of `url` is kept: one file per address, named after its last path segment."""
    name = os.path.basename(urlparse(url).path) or 'data.txt'
    safe = ''.join(ch if ch.isalnum() or ch in '._-' else '_' for ch in name)[:80]
    import hashlib
    key = hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]
    return os.path.join(cache_dir or cache_folder(), 'downloads', f'{key}-{safe}')


def fetch(url, cache_dir=None, progress=None):
    """The local path of `url`'s file, downloading it on first use; `progress(done_bytes, total_bytes_or_None)`
    is called as blocks arrive."""
    _refuse_credentials(url)
    path = download_path(url, cache_dir)
    if os.path.isfile(path):
        return path
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = make_temporary(folder, '.tmp-download-')
    except OSError as e:
        raise MicrogptError(f"{url}: cannot keep the download in {folder} ({folder_problem(folder, e)}); set "
                            f"MICROGPT_CACHE to a writable folder, or download the file and give its path") from None
    try:
        try:
            with os.fdopen(fd, 'wb') as f:
                _download(url, f, progress)
        except (_CannotKeep, OSError) as e:  # a full disk, a quota: _download's own OSErrors are the network's
            error = e.args[0] if isinstance(e, _CannotKeep) else e
            raise MicrogptError(f"{url}: cannot keep the download in {folder} ({error.strerror or error}); set "
                                f"MICROGPT_CACHE to a folder with room, or download the file and give its "
                                f"path") from None
        try:  # kept, a download that is not text would fail every later run, the server fixed or not
            check_text(tmp)
        except NotData as e:
            raise NotData(f"{url}{str(e).removeprefix(tmp)}; the download was not kept") from None
        os.replace(tmp, path)
    except BaseException:  # an error, Ctrl-C: no partial download stays behind
        remove_quietly(tmp)
        raise
    return path


class _CannotKeep(Exception):
    """Writing the download failed (its OSError in args[0]): the cache's disk, not the network."""


def _refuse_credentials(url):
    """A user name or password in the address is refused, shown as ***: the address is printed, and kept in a run's
    checkpoint."""
    if redacted(url) != url:
        raise MicrogptError(f"{redacted(url)}: an address with a user name or password is not fetched (the address "
                            f"is printed and kept in a run's checkpoint); download the file and give its path")


class _Decoder:
    """A response body's Content-Encoding, which a server may use unasked, undone as it arrives: gzip (one member
    or several, as `cat a.gz b.gz` makes, zero bytes between or after them ignored as Python's gzip does) and
    deflate (zlib-wrapped, or raw as some servers send it); no encoding passed on; anything else refused."""

    def __init__(self, url, content_encoding):
        codings = [c for c in (content_encoding or '').lower().replace(' ', '').split(',') if c not in ('', 'identity')]
        if len(codings) > 1 or codings and codings[0] not in ('gzip', 'x-gzip', 'deflate'):
            raise MicrogptError(f"{url}: the server sent the file encoded as {content_encoding!r}, which microgpt "
                                f"does not decode; download the file and give its path")
        self.url, self.coding = url, codings[0] if codings else None
        self.encoded = self.coding is not None
        self.head = b''  # deflate's first two bytes, which tell a zlib header from a raw stream
        self.stream = zlib.decompressobj(32 + 15) if self.coding in ('gzip', 'x-gzip') else None

    def decode(self, block):
        """The decoded bytes of `block`, in pieces of at most BLOCK_BYTES (a small block may decode to gigabytes)."""
        if not self.encoded:
            yield block
            return
        if self.stream is None:
            self.head += block
            if len(self.head) < 2:
                return
            wrapped = self.head[0] & 0x0F == 8 and (self.head[0] << 8 | self.head[1]) % 31 == 0
            self.stream, block, self.head = zlib.decompressobj(15 if wrapped else -15), self.head, b''
        while block:
            if self.stream.eof:  # bytes after a gzip member: zero padding, as gzip tools accept, or the next member
                if self.coding == 'deflate':
                    raise self._undecodable('bytes after its end')
                block = block.lstrip(b'\0')
                if not block:
                    return
                self.stream = zlib.decompressobj(32 + 15)
            try:
                piece = self.stream.decompress(block, BLOCK_BYTES)
            except zlib.error as e:
                raise self._undecodable(e) from None
            block = self.stream.unconsumed_tail or self.stream.unused_data
            yield piece

    def check_ended(self):
        """An error if the encoded stream did not end (once it has, decode gave all of it)."""
        if self.encoded and (self.stream is None or not self.stream.eof):
            raise self._undecodable('it ends early')

    def _undecodable(self, why):
        return MicrogptError(f"{self.url}: the server sent the file encoded as {self.coding!r}, and it does not "
                             f"decode ({why}); download the file and give its path")


def _download(url, f, progress):
    import http.client  # here: a run from a local file never loads the HTTP stack
    import urllib.error
    import urllib.request
    hint = "check the address and the network, or download the file and give its path"
    done, response = 0, None
    try:
        # as a browser sends it: a space or a character outside ASCII percent-encoded, what is encoded kept
        with urllib.request.urlopen(quote(url, safe=URL_CHARACTERS), timeout=TIMEOUT_S) as response:
            if response.headers.get_content_type() == 'text/html':  # a folder listing, a repository's page of it
                raise MicrogptError(f"{url}: is a web page (text/html), not a text file of documents; give the "
                                    f"address of the file itself (its raw text)")
            length = response.headers.get('Content-Length')
            total = int(length) if length and length.isdigit() else None  # of the bytes sent (encoded)
            decoder, kept = _Decoder(url, response.headers.get('Content-Encoding')), 0
            if progress:
                progress(0, total)
            while True:
                block = response.read1(BLOCK_BYTES)  # what has arrived: a stall then reports it
                if not block:
                    break
                done += len(block)
                for piece in decoder.decode(block):
                    try:
                        f.write(piece)
                    except OSError as e:
                        raise _CannotKeep(e) from None
                    kept += len(piece)
                    if (total is None or decoder.encoded) and kept > MAX_STREAM_BYTES:  # a size nobody announced
                        raise MicrogptError(f"{url}: {'decodes to ' if decoder.encoded else ''}more than "
                                            f"{MAX_STREAM_BYTES:,} bytes with no announced size; download the file "
                                            f"and give its path")
                if progress:
                    progress(done, total)
            if total is None or done == total:
                decoder.check_ended()
    except urllib.error.HTTPError as e:
        reason = ' '.join(str(e.reason).split())  # a redirect loop's reason is three lines
        raise MicrogptError(f"{url}: the server answered {e.code} {reason}; {hint}") from None
    except urllib.error.URLError as e:
        raise MicrogptError(f"{url}: cannot download ({getattr(e.reason, 'strerror', None) or e.reason}); "
                            f"{hint}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # cut off, reset or timed out; malformed
        reason = type(e).__name__ if isinstance(e, http.client.IncompleteRead) else (str(e) or type(e).__name__)
        if response is None:  # no answer to break off: an address urllib cannot send ('nonnumeric port')
            raise MicrogptError(f"{url}: cannot download ({reason}); {hint}") from None
        raise MicrogptError(f"{url}: the download broke off after {done:,} bytes ({reason}); {hint}") from None
    if total is not None and done != total:
        raise MicrogptError(f"{url}: partial download, {done:,} of {total:,} bytes; {hint}")
