"""A writable /tmp that lives in the instance's own memory.

The sandbox grants no writable directory, and CPython for WASI cannot be
given one from inside; so the file functions of `os` and `io.open` (which
`open`, `tempfile`, `shutil` and `pathlib` go through) answer for paths
under /tmp themselves, from a dictionary in the interpreter's heap.
Everything else goes to the real functions unchanged. What is written is
bounded by the instance's memory limit (a `MemoryError` past it) and gone
with the instance, like every other object: each request starts from the
empty /tmp of the snapshot.

Covered: files (open in every mode, os.open/read/write/lseek/fstat/
ftruncate/close, os.fdopen), directories (mkdir, makedirs, listdir,
scandir, rmdir, rmtree, walk), stat, exists, rename/replace, unlink,
utime/chmod (remembered or ignored). Not covered: links, file locks,
memory mapping, passing these descriptors to code written in C or to the
functions of `os` that take only a descriptor (`pread`, `dup`, `fwalk`).
"""

import builtins
import errno
import io
import os
import stat as _stat
import sys
import time

ROOT = "/tmp"
_FD_BASE = 1 << 24
# The access-mode bits: 3 on Linux, but O_RDONLY is not 0 in WASI's libc.
_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR

_real = {}
_nodes = {}
_fds = {}
_next_fd = [_FD_BASE]


class _File:
    __slots__ = ("data", "mtime", "mode")

    def __init__(self, mode=0o600):
        self.data = bytearray()
        self.mtime = time.time()
        self.mode = mode


class _Dir:
    __slots__ = ("mtime", "mode", "children")

    def __init__(self, mode=0o700):
        self.mtime = time.time()
        self.mode = mode
        self.children = {}


def _error(code, path):
    return OSError(code, os.strerror(code), path)


def _ours(path):
    """The normalised /tmp path `path` names, or None if it is not ours."""
    if isinstance(path, int) or path is None:
        return None
    try:
        path = os.fspath(path)
    except TypeError:
        return None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    # Relative paths never resolve into /tmp: the working directory is
    # never in it (os.chdir is the real one).
    if not path.startswith(ROOT):
        return None
    path = os.path.normpath(path)
    if path == ROOT or path.startswith(ROOT + "/"):
        return path
    return None


def _lookup(path, original):
    """The node at `path` (ours), or raise as the kernel would; a trailing
    slash needs a directory."""
    node = _nodes.get(path)
    if node is None:
        raise _error(errno.ENOENT, original)
    if isinstance(node, _File) and os.fspath(original)[-1:] in ("/", b"/"):
        raise _error(errno.ENOTDIR, original)
    return node


def _parent(path):
    """The directory node `path` would be in."""
    node = _nodes.get(os.path.dirname(path))
    if not isinstance(node, _Dir):
        raise _error(errno.ENOENT if node is None else errno.ENOTDIR, path)
    return node


def _link(path, node):
    parent = _parent(path)
    parent.children[os.path.basename(path)] = node
    parent.mtime = time.time()
    _nodes[path] = node


def _drop(path):
    parent = _parent(path)
    del parent.children[os.path.basename(path)]
    parent.mtime = time.time()
    del _nodes[path]


def _children(path):
    return sorted(_nodes[path].children)


def _stat_result(node):
    is_dir = isinstance(node, _Dir)
    size = 0 if is_dir else len(node.data)
    kind = _stat.S_IFDIR if is_dir else _stat.S_IFREG
    t = node.mtime
    ns = int(t * 1e9)
    return os.stat_result(
        (kind | node.mode, id(node) & 0xFFFFFFFF, 0x7FFF, 2 if is_dir else 1,
         os.getuid(), os.getgid(), size, int(t), int(t), int(t), t, t, t, ns, ns, ns)
    )


class _Open:
    __slots__ = ("node", "path", "pos", "readable", "writable", "append")

    def __init__(self, node, path, flags):
        access = flags & _ACCESS
        self.node = node
        self.path = path
        self.pos = 0
        self.readable = access in (os.O_RDONLY, os.O_RDWR)
        self.writable = access in (os.O_WRONLY, os.O_RDWR)
        self.append = bool(flags & os.O_APPEND)


def _fd(fd):
    entry = _fds.get(fd)
    if entry is None:
        raise _error(errno.EBADF, None)
    return entry


# --- os -------------------------------------------------------------------


def _open(path, flags, mode=0o777, *, dir_fd=None):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["open"](path, flags, mode, dir_fd=dir_fd)
    node = _nodes.get(ours)
    if node is None:
        if not flags & os.O_CREAT:
            raise _error(errno.ENOENT, path)
        node = _File(mode & 0o777)
        _link(ours, node)
    elif flags & os.O_CREAT and flags & os.O_EXCL:
        raise _error(errno.EEXIST, path)
    else:
        node = _lookup(ours, path)
    if isinstance(node, _Dir):
        if flags & _ACCESS != os.O_RDONLY:
            raise _error(errno.EISDIR, path)
    elif flags & os.O_TRUNC and flags & _ACCESS != os.O_RDONLY:
        node.data = bytearray()
        node.mtime = time.time()
    fd = _next_fd[0]
    _next_fd[0] += 1
    _fds[fd] = _Open(node, ours, flags)
    return fd


def _close(fd):
    if fd in _fds:
        del _fds[fd]
    else:
        _real["close"](fd)


def _read(fd, n):
    if fd not in _fds:
        return _real["read"](fd, n)
    entry = _fd(fd)
    if isinstance(entry.node, _Dir):
        raise _error(errno.EISDIR, entry.path)
    if not entry.readable:
        raise _error(errno.EBADF, entry.path)
    with memoryview(entry.node.data) as view:
        data = bytes(view[entry.pos:entry.pos + max(n, 0)])
    entry.pos += len(data)
    return data


def _write_at(entry, data):
    if not entry.writable or isinstance(entry.node, _Dir):
        raise _error(errno.EBADF, entry.path)
    buf = entry.node.data
    if entry.append:
        entry.pos = len(buf)
    if entry.pos > len(buf):
        buf.extend(bytes(entry.pos - len(buf)))
    buf[entry.pos:entry.pos + len(data)] = data
    entry.pos += len(data)
    entry.node.mtime = time.time()
    return len(data)


def _write(fd, data):
    if fd not in _fds:
        return _real["write"](fd, data)
    return _write_at(_fd(fd), memoryview(data).cast("B"))


def _lseek(fd, pos, how):
    if fd not in _fds:
        return _real["lseek"](fd, pos, how)
    entry = _fd(fd)
    base = {os.SEEK_SET: 0, os.SEEK_CUR: entry.pos}.get(how)
    if base is None:
        base = 0 if isinstance(entry.node, _Dir) else len(entry.node.data)
    if base + pos < 0:
        raise _error(errno.EINVAL, entry.path)
    entry.pos = base + pos
    return entry.pos


def _fstat(fd):
    if fd not in _fds:
        return _real["fstat"](fd)
    return _stat_result(_fd(fd).node)


def _ftruncate(fd, length):
    if fd not in _fds:
        return _real["ftruncate"](fd, length)
    entry = _fd(fd)
    if not entry.writable:
        raise _error(errno.EBADF, entry.path)
    _truncate_node(entry.node, length)


def _truncate_node(node, length):
    if length < 0:
        raise _error(errno.EINVAL, None)
    data = node.data
    if length < len(data):
        del data[length:]
    else:
        data.extend(bytes(length - len(data)))
    node.mtime = time.time()


def _truncate(path, length):
    if isinstance(path, int) and path in _fds:
        return _ftruncate(path, length)
    ours = _ours(path)
    if ours is None:
        return _real["truncate"](path, length)
    node = _lookup(ours, path)
    if not isinstance(node, _File):
        raise _error(errno.EISDIR, path)
    _truncate_node(node, length)


def _fsync(fd):
    if fd not in _fds:
        return _real["fsync"](fd)


def _isatty(fd):
    return False if fd in _fds else _real["isatty"](fd)


def _stat_path(path, *, dir_fd=None, follow_symlinks=True):
    if isinstance(path, int) and path in _fds:
        return _stat_result(_fds[path].node)
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    return _stat_result(_lookup(ours, path))


def _lstat(path, *, dir_fd=None):
    if _ours(path) is None or dir_fd is not None:
        return _real["lstat"](path, dir_fd=dir_fd)
    return _stat_path(path)


def _mkdir(path, mode=0o777, *, dir_fd=None):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["mkdir"](path, mode, dir_fd=dir_fd)
    if ours in _nodes:
        raise _error(errno.EEXIST, path)
    _link(ours, _Dir(mode & 0o777))


def _rmdir(path, *, dir_fd=None):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["rmdir"](path, dir_fd=dir_fd)
    node = _nodes.get(ours)
    if not isinstance(node, _Dir):
        raise _error(errno.ENOENT if node is None else errno.ENOTDIR, path)
    if ours == ROOT:
        raise _error(errno.EBUSY, path)
    if node.children:
        raise _error(errno.ENOTEMPTY, path)
    _drop(ours)


def _unlink(path, *, dir_fd=None):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["unlink"](path, dir_fd=dir_fd)
    node = _lookup(ours, path)
    if not isinstance(node, _File):
        raise _error(errno.EISDIR, path)
    _drop(ours)


def _remove(path, *, dir_fd=None):
    return _unlink(path, dir_fd=dir_fd)


def _rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None, _real_name="rename"):
    a, b = _ours(src), _ours(dst)
    if a is None and b is None:
        return _real[_real_name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    if a is None or b is None:
        raise _error(errno.EXDEV, src)
    node = _lookup(a, src)
    if a == b:
        return
    _parent(b)
    if b.startswith(a + "/") or a == ROOT:
        raise _error(errno.EINVAL, src)
    target = _nodes.get(b)
    if isinstance(target, _Dir):
        if not isinstance(node, _Dir):
            raise _error(errno.EISDIR, dst)
        if target.children:
            raise _error(errno.ENOTEMPTY, dst)
    elif target is not None and isinstance(node, _Dir):
        raise _error(errno.ENOTDIR, dst)
    if target is not None:
        _drop(b)
    _drop(a)
    _link(b, node)
    if isinstance(node, _Dir):
        # Re-key what is below it (a file moves in constant time).
        below = [p for p in _nodes if p.startswith(a + "/")]
        for p in below:
            _nodes[b + p[len(a):]] = _nodes.pop(p)


def _replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    return _rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, _real_name="replace")


def _listdir(path="."):
    if isinstance(path, int) and path in _fds:
        path = _fds[path].path
    ours = _ours(path)
    if ours is None:
        return _real["listdir"](path)
    node = _lookup(ours, path)
    if not isinstance(node, _Dir):
        raise _error(errno.ENOTDIR, path)
    names = sorted(node.children)
    if isinstance(os.fspath(path), bytes):
        return [os.fsencode(n) for n in names]
    return names


class _DirEntry:
    __slots__ = ("name", "path", "_node")

    def __init__(self, name, path, node):
        self.name, self.path, self._node = name, path, node

    def is_dir(self, *, follow_symlinks=True):
        return isinstance(self._node, _Dir)

    def is_file(self, *, follow_symlinks=True):
        return isinstance(self._node, _File)

    def is_symlink(self):
        return False

    def is_junction(self):
        return False

    def stat(self, *, follow_symlinks=True):
        return _stat_result(self._node)

    def inode(self):
        return id(self._node) & 0xFFFFFFFF

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return f"<DirEntry {self.name!r}>"


class _ScandirIterator:
    def __init__(self, entries):
        self._it = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._it = iter(())


def _scandir(path="."):
    ours = _ours(path)
    if ours is None:
        return _real["scandir"](path)
    shown = os.fspath(path)
    entries = []
    for name in _listdir(path):
        node = _nodes[ours + "/" + os.fsdecode(name)]
        entries.append(_DirEntry(name, os.path.join(shown, name), node))
    return _ScandirIterator(entries)


def _access(path, mode, *, dir_fd=None, effective_ids=False, follow_symlinks=True):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["access"](path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                               follow_symlinks=follow_symlinks)
    return ours in _nodes


def _utime(path, times=None, *, ns=None, dir_fd=None, follow_symlinks=True):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        # The real utime refuses ns=None given explicitly.
        extra = {} if ns is None else {"ns": ns}
        return _real["utime"](path, times, dir_fd=dir_fd, follow_symlinks=follow_symlinks, **extra)
    node = _lookup(ours, path)
    if ns is not None:
        node.mtime = ns[1] / 1e9
    elif times is not None:
        node.mtime = times[1]
    else:
        node.mtime = time.time()


def _chmod(path, mode, *, dir_fd=None, follow_symlinks=True):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["chmod"](path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    node = _lookup(ours, path)
    node.mode = mode & 0o7777


def _readlink(path, *, dir_fd=None):
    ours = _ours(path) if dir_fd is None else None
    if ours is None:
        return _real["readlink"](path, dir_fd=dir_fd)
    raise _error(errno.EINVAL if ours in _nodes else errno.ENOENT, path)


# --- io.open ----------------------------------------------------------------


class _Ours(Exception):
    """An opener returned one of our descriptors (see `_io_open`)."""

    def __init__(self, fd):
        super().__init__(fd)
        self.fd = fd


class _Raw(io.RawIOBase):
    """The unbuffered file object over one of our descriptors."""

    def __init__(self, fd, name, mode, closefd):
        entry = _fd(fd)
        self._fd = fd
        self.name = name
        self.mode = mode
        self._closefd = closefd
        self._readable = entry.readable
        self._writable = entry.writable

    def readable(self):
        self._checkClosed()
        return self._readable

    def writable(self):
        self._checkClosed()
        return self._writable

    def seekable(self):
        self._checkClosed()
        return True

    def fileno(self):
        self._checkClosed()
        return self._fd

    def isatty(self):
        self._checkClosed()
        return False

    def readinto(self, buffer):
        self._checkClosed()
        with memoryview(buffer) as view, view.cast("B") as target:
            data = _read(self._fd, len(target))
            target[:len(data)] = data
        return len(data)

    def readall(self):
        # One copy, not the chunked default's several.
        self._checkClosed()
        entry = _fd(self._fd)
        if not entry.readable:
            raise _error(errno.EBADF, entry.path)
        with memoryview(entry.node.data) as view:
            data = bytes(view[entry.pos:])
        entry.pos += len(data)
        return data

    def write(self, data):
        self._checkClosed()
        return _write(self._fd, data)

    def seek(self, pos, whence=0):
        self._checkClosed()
        return _lseek(self._fd, pos, whence)

    def tell(self):
        self._checkClosed()
        return _fd(self._fd).pos

    def truncate(self, size=None):
        _ftruncate(self._fd, self.tell() if size is None else size)
        return self.tell() if size is None else size

    def close(self):
        if not self.closed and self._closefd:
            _fds.pop(self._fd, None)
        super().close()


_FLAGS = {
    "r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def _io_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
             closefd=True, opener=None, *, name=None):
    if opener is not None:
        # tempfile opens through an opener that returns the descriptor.
        # The real open checks the arguments and computes the flags; it is
        # taken over only if the descriptor the opener returns is ours.
        def wrapped(path, flags):
            fd = opener(path, flags)
            if fd in _fds:
                raise _Ours(fd)
            return fd

        try:
            return _real["io.open"](file, mode, buffering, encoding, errors, newline, closefd,
                                    wrapped)
        except _Ours as ours:
            return _io_open(ours.fd, mode, buffering, encoding, errors, newline, True, None,
                            name=file)
    ours = _ours(file) if not isinstance(file, int) else None
    if ours is None and not (isinstance(file, int) and file in _fds):
        return _real["io.open"](file, mode, buffering, encoding, errors, newline, closefd, opener)
    if not isinstance(mode, str) or set(mode) - set("rwaxbt+") or len(set(mode)) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    binary = "b" in mode
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    plus = "+" in mode
    if isinstance(file, int):
        fd, name = file, file if name is None else name
    else:
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
        flags = _FLAGS[kinds[0]]
        if plus:
            flags = (flags & ~_ACCESS) | os.O_RDWR
        fd, name = _open(ours, flags, 0o666), file
        if isinstance(_fds[fd].node, _Dir):
            _close(fd)
            raise _error(errno.EISDIR, file)
    # The mode FileIO reports.
    raw_mode = {"x": "xb", "a": "ab", "w": "wb", "r": "rb"}[kinds[0]]
    if plus:
        raw_mode = "rb+" if kinds[0] in "rw" else raw_mode + "+"
    raw = _Raw(fd, name, raw_mode, closefd)
    if kinds[0] == "a":
        _lseek(fd, 0, os.SEEK_END)
    if buffering == 0:
        if not binary:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
    if plus:
        buffer = io.BufferedRandom(raw, size)
    elif kinds[0] == "r":
        buffer = io.BufferedReader(raw, size)
    else:
        buffer = io.BufferedWriter(raw, size)
    if binary:
        return buffer
    text = io.TextIOWrapper(buffer, encoding or "utf-8", errors, newline,
                            line_buffering=buffering == 1)
    text.mode = mode
    return text


# --- installing ---------------------------------------------------------------

_OS = {
    "open": _open, "close": _close, "read": _read, "write": _write, "lseek": _lseek,
    "fstat": _fstat, "ftruncate": _ftruncate, "truncate": _truncate, "fsync": _fsync,
    "isatty": _isatty, "stat": _stat_path, "lstat": _lstat, "mkdir": _mkdir,
    "rmdir": _rmdir, "unlink": _unlink, "remove": _remove, "rename": _rename,
    "replace": _replace, "listdir": _listdir, "scandir": _scandir, "access": _access,
    "utime": _utime, "chmod": _chmod, "readlink": _readlink,
}


def install():
    """Patch `os` and `io.open` (once), make /tmp exist and point
    `tempfile` at it."""
    if _real:
        return
    for name, fake in _OS.items():
        real = getattr(os, name, None)
        if real is None:
            continue
        _real[name] = real
        fake.__name__ = fake.__qualname__ = name
        fake.__doc__ = real.__doc__
        setattr(os, name, fake)
    _real["io.open"] = io.open
    io.open = builtins.open = _io_open
    _nodes[ROOT] = _Dir(0o1777)
    import shutil
    import tempfile

    # shutil chose its descriptor-based rmtree at import: for /tmp, whose
    # descriptors are not the kernel's, the path-based one is used.
    safe = getattr(shutil, "_rmtree_impl", None)
    unsafe = getattr(shutil, "_rmtree_unsafe", None)
    if safe is not None and unsafe is not None:
        def rmtree_impl(path, dir_fd, onexc):
            chosen = unsafe if dir_fd is None and _ours(path) is not None else safe
            return chosen(path, dir_fd, onexc)

        shutil._rmtree_impl = rmtree_impl
    # Functions that bound the real ones when their module was imported
    # (before this): NamedTemporaryFile's cleanup, and modules' own opens.
    closer = getattr(tempfile, "_TemporaryFileCloser", None)
    cleanup = getattr(closer, "cleanup", None)
    if cleanup is not None and cleanup.__defaults__:
        cleanup.__defaults__ = tuple(
            os.unlink if d is _real["unlink"] else d for d in cleanup.__defaults__
        )
    for module, attribute in (("tokenize", "_builtin_open"), ("tarfile", "bltn_open"),
                              ("bz2", "_builtin_open")):
        found = sys.modules.get(module)
        if found is not None and getattr(found, attribute, None) is _real["io.open"]:
            setattr(found, attribute, _io_open)
    # tempfile is pointed at /tmp directly: the environment stays empty.
    tempfile.tempdir = ROOT
