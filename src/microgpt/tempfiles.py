"""Temporary files of atomic writes (write under a temporary name, rename when complete), and the removal of
those that an interrupted or killed write left behind.

A temporary is named PREFIX + PID + '-' + random: the next write into the same folder removes the ones whose
process is gone (and our own), never those of another run writing there now.
"""

import contextlib
import errno
import os
import secrets
import time

TEMPORARY_PREFIX = '.tmp-'  # every temporary we write: checkpoints' and write_text's


def make_temporary(folder, prefix, suffix='', shared=False):
    """(fd, path) of a new temporary file in `folder`, after removing the stale ones of this prefix there. Private
    (0600, as mkstemp makes them: a token cache or a download of someone's private data), or `shared`: the
    permissions any new file gets, as the system applies the umask (a run's checkpoints beside its metrics, a web
    page for a web server)."""
    remove_stale(folder, prefix, suffix)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0) | getattr(os, 'O_BINARY', 0)
    for _ in range(100):  # as mkstemp tries names
        path = os.path.join(folder, f'{prefix}{os.getpid()}-{secrets.token_hex(4)}{suffix}')
        try:
            return os.open(path, flags, 0o666 if shared else 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {folder}")


def write_text(path, text):
    """Write `text` (UTF-8, newline '\\n') to `path` whole or not at all: into a temporary in the same folder, renamed
    over `path` once complete, with the permissions a new file gets. An OSError (a full disk) or Ctrl-C leaves
    `path` as it was and no temporary."""
    tmp = _temporary_holding(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_texts(texts):
    """write_text for each of `texts` ({path: text}), as one change: every text goes to a temporary beside its path
    first, and only once all are written are they renamed over their paths, so that a full disk or a Ctrl-C while
    writing leaves every path as it was (an export into a folder holding an earlier one does not become half of
    each). A path that is a folder is refused before anything is written. The OSError names the path that failed
    (filename)."""
    for path in texts:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    temporaries, path = {}, None
    try:
        for path, text in texts.items():
            temporaries[path] = _temporary_holding(path, text)
        for path in texts:
            os.replace(temporaries[path], path)
            del temporaries[path]
    except BaseException as e:
        for tmp in temporaries.values():
            remove_quietly(tmp)
        if isinstance(e, OSError):
            e.filename, e.filename2 = path, None
        raise


def _temporary_holding(path, text):
    """A new temporary beside `path` holding `text` (UTF-8, newline '\\n'), with the permissions a new file gets;
    none is left if writing it fails."""
    fd, tmp = make_temporary(os.path.dirname(os.path.abspath(path)), TEMPORARY_PREFIX, '-' + os.path.basename(path),
                             shared=True)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8', newline='\n') as f:
            f.write(text)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def write_new_text(path, text):
    """Write `text` to `path` whole, only if no file is there: True if this call wrote it, False if one was (another
    process may have written it a moment before). The text goes to a temporary, linked in at `path` (a rename would
    replace a file there); on a file system without links (FAT, some network mounts), `path` is made exclusively
    and written."""
    tmp = _temporary_holding(path, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        pass
    finally:
        remove_quietly(tmp)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)
    return True


def make_folders(path):
    """Make the folder `path` and its missing parents; the folders this call made (another process making one at
    the same moment made it, not this call), the outermost first."""
    missing, head = [], os.path.abspath(path)
    while not os.path.isdir(head) and os.path.dirname(head) != head:
        missing.append(head)
        head = os.path.dirname(head)
    made = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            made.append(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
    return made


def remove_folders(made):
    """Remove the folders make_folders made, the innermost first, each only if it is empty: what anyone else has
    put there since stays."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except OSError:
            return


@contextlib.contextmanager
def folder_for(path):
    """Make the folder `path` (and its parents) for the files the block writes into it, and yield a list for the
    paths of the files it writes. When the block fails (an OSError, Ctrl-C), those files and the folders made
    here go again, so that an export that failed on a full disk leaves no new folder holding some of its files;
    a file or folder this call did not make is never removed."""
    made, written = make_folders(path), []
    try:
        yield written
    except BaseException:
        if made:
            for file in written:
                remove_quietly(file)
            remove_folders(made)
        raise


def lock_folder(folder, wait):
    """An advisory lock (flock) on the folder itself, so no file is left behind: the descriptor that holds it
    (closing it, or the process ending, releases it), or None where the system or the file system has no flock, or
    the folder cannot be opened for reading (mode 300). Without `wait`, BlockingIOError if another holds it."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # a file system without locks
        os.close(fd)
        return None
    return fd


def remove_stale(folder, prefix, suffix='', unchanged_s=0):
    """Remove `prefix`PID-*`suffix` files of processes that are gone or are this one, and `prefix`*`suffix`
    files that name no process (written by versions that did not); with `unchanged_s`, only those unchanged for
    that long (a folder shared between machines, where a process id names another machine's writer too)."""
    for name in os.listdir(folder):
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix):].split('-', 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and process_is_alive(int(pid)):
            continue  # another run writing into this folder right now
        path = os.path.join(folder, name)
        try:
            if unchanged_s and time.time() - os.stat(path).st_mtime < unchanged_s:
                continue
        except OSError:
            continue
        remove_quietly(path)


def process_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def folder_problem(folder, error):
    """Why `folder` could not be made or written into, for a message: `error`'s words, or where a file stands in
    the way (os.makedirs says only 'File exists' or 'Not a directory')."""
    path = os.path.normpath(folder)
    while not os.path.lexists(path) and os.path.dirname(path) not in ('', path):
        path = os.path.dirname(path)
    if not os.path.lexists(path) or os.path.isdir(path):
        return error.strerror or str(error)
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a link to nothing"
    return f"{path} is a file, not a folder"


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
