"""Filling the gaps of CPython for WASI that break common packages.

Installed by the glue at build time, before the handler is imported, so
that both the handler's import and every request (which starts from that
snapshot) see the same standard library. Each gap is filled only where the
real thing is missing; README "Imports and the standard library" lists
them:

- `ssl`: no `_ssl` here; a stand-in (`pycage._ssl`) that imports and
  configures, and fails clearly when asked to speak TLS.
- `os.getuid`, `geteuid`, `getgid`, `getegid`, `getgroups`, `getppid`,
  `getlogin`, `umask`: a fixed unprivileged identity (uid and gid 1000,
  user "pycage"); `pwd` and `grp` know exactly that user and group, so
  `getpass.getuser()` answers "pycage".
- `hashlib.pbkdf2_hmac`: missing without OpenSSL; the standard algorithm in
  Python over `hmac` (slower than OpenSSL's, same results).
- `tempfile`: `/tmp` is writable and lives in the instance's memory
  (`pycage._tmpfs`), bounded by its memory limit and gone with it; every
  `tempfile` function works there.
- `bz2` and `lzma`: CPython for WASI is built without libbz2 and liblzma;
  stand-in `_bz2` and `_lzma` modules let both import (networkx and
  others import `bz2` unconditionally), and compressing or decompressing
  raises `RuntimeError` saying why. zlib and gzip are real.
- `mmap`: WASI has no memory mapping; a stand-in module with the
  constants, whose `mmap()` raises `OSError` (prometheus-client imports it
  unconditionally, for its multiprocess mode).
- threads: starting one raises `RuntimeError` saying that WASI has none.
- asyncio: pycage's event loop (`pycage._aio`) is the one asyncio creates,
  however late asyncio is imported.
"""

import os
import sys
import types

UID = GID = 1000
USER = "pycage"
HOME = "/nonexistent"

_THREADS = (
    "threads are not available in the pycage sandbox (WASI has no threads); "
    "for concurrent I/O use async def handlers and pycage.fetch_async"
)


def install():
    _install_ssl()
    _install_identity()
    _install_hashlib()
    _install_tempfile()
    _install_threading()
    _install_compression()
    _after_import("asyncio", _install_asyncio)


def _install_ssl():
    try:
        import ssl  # noqa: F401
    except ImportError:
        from . import _ssl

        sys.modules["ssl"] = _ssl


def _unavailable(library, module):
    message = (
        f"{module} compression is not available in the pycage sandbox "
        f"(CPython for WASI is built without {library}); zlib and gzip are"
    )

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(message)

    return Unavailable


def _install_compression():
    try:
        import _bz2  # noqa: F401
    except ImportError:
        stub = types.ModuleType("_bz2", "Stand-in: no libbz2 here (pycage._compat).")
        stub.BZ2Compressor = stub.BZ2Decompressor = _unavailable("libbz2", "bz2")
        sys.modules["_bz2"] = stub
    try:
        import _lzma  # noqa: F401
    except ImportError:
        sys.modules["_lzma"] = _lzma_module()
    try:
        import mmap  # noqa: F401
    except ImportError:
        sys.modules["mmap"] = _mmap_module()


def _mmap_module():
    stub = types.ModuleType("mmap", "Stand-in: WASI has no memory mapping (pycage._compat).")
    constants = {
        "ACCESS_DEFAULT": 0, "ACCESS_READ": 1, "ACCESS_WRITE": 2, "ACCESS_COPY": 3,
        "PAGESIZE": 65536, "ALLOCATIONGRANULARITY": 65536,
        "MAP_SHARED": 1, "MAP_PRIVATE": 2, "MAP_ANONYMOUS": 32, "MAP_ANON": 32,
        "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4,
    }
    for name, value in constants.items():
        setattr(stub, name, value)

    class mmap:  # noqa: N801 - the real class's name
        def __init__(self, *args, **kwargs):
            raise OSError(
                "mmap is not available in the pycage sandbox (WASI has no memory mapping)"
            )

    stub.mmap = mmap
    stub.error = OSError
    return stub


def _lzma_module():
    stub = types.ModuleType("_lzma", "Stand-in: no liblzma here (pycage._compat).")
    unavailable = _unavailable("liblzma", "lzma")
    constants = {
        "FORMAT_AUTO": 0, "FORMAT_XZ": 1, "FORMAT_ALONE": 2, "FORMAT_RAW": 3,
        "CHECK_NONE": 0, "CHECK_CRC32": 1, "CHECK_CRC64": 4, "CHECK_SHA256": 10,
        "CHECK_ID_MAX": 15, "CHECK_UNKNOWN": 16,
        "FILTER_LZMA1": 0x4000000000000001, "FILTER_LZMA2": 0x21, "FILTER_DELTA": 3,
        "FILTER_X86": 4, "FILTER_POWERPC": 5, "FILTER_IA64": 6, "FILTER_ARM": 7,
        "FILTER_ARMTHUMB": 8, "FILTER_SPARC": 9,
        "MF_HC3": 0x03, "MF_HC4": 0x04, "MF_BT2": 0x12, "MF_BT3": 0x13, "MF_BT4": 0x14,
        "MODE_FAST": 1, "MODE_NORMAL": 2, "PRESET_DEFAULT": 6, "PRESET_EXTREME": 0x80000000,
    }
    for name, value in constants.items():
        setattr(stub, name, value)

    class LZMAError(Exception):
        pass

    def refuse(*args, **kwargs):
        unavailable()

    stub.LZMAError = LZMAError
    stub.LZMACompressor = stub.LZMADecompressor = unavailable
    stub.is_check_supported = lambda check: False
    stub._encode_filter_properties = stub._decode_filter_properties = refuse
    return stub


def _install_identity():
    constants = {
        "getuid": UID, "geteuid": UID, "getgid": GID, "getegid": GID,
        "getppid": 1, "getlogin": USER,
    }
    for name, value in constants.items():
        if not hasattr(os, name):
            setattr(os, name, _constant(name, value))
    if not hasattr(os, "getgroups"):
        os.getgroups = lambda: [GID]
    if not hasattr(os, "umask"):
        # Nothing here can create files, so the mask is only remembered.
        mask = [0o022]

        def umask(new):
            old, mask[0] = mask[0], int(new) & 0o777
            return old

        os.umask = umask
    for name, make in (("pwd", _pwd_module), ("grp", _grp_module)):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = make()


def _constant(name, value):
    def get():
        return value

    get.__name__ = get.__qualname__ = name
    get.__doc__ = f"pycage sandbox: always {value!r}."
    return get


def _pwd_module():
    module = types.ModuleType("pwd", "The sandbox's one user (pycage._compat).")

    class struct_passwd(tuple):
        _fields = ("pw_name", "pw_passwd", "pw_uid", "pw_gid", "pw_gecos", "pw_dir", "pw_shell")
        n_fields = n_sequence_fields = 7
        pw_name = property(lambda self: self[0])
        pw_passwd = property(lambda self: self[1])
        pw_uid = property(lambda self: self[2])
        pw_gid = property(lambda self: self[3])
        pw_gecos = property(lambda self: self[4])
        pw_dir = property(lambda self: self[5])
        pw_shell = property(lambda self: self[6])

    entry = struct_passwd((USER, "x", UID, GID, USER, HOME, "/bin/false"))

    def getpwuid(uid):
        if uid == UID:
            return entry
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    def getpwnam(name):
        if name == USER:
            return entry
        raise KeyError(f"getpwnam(): name not found: {name!r}")

    module.struct_passwd = struct_passwd
    module.getpwuid = getpwuid
    module.getpwnam = getpwnam
    module.getpwall = lambda: [entry]
    return module


def _grp_module():
    module = types.ModuleType("grp", "The sandbox's one group (pycage._compat).")

    class struct_group(tuple):
        n_fields = n_sequence_fields = 4
        gr_name = property(lambda self: self[0])
        gr_passwd = property(lambda self: self[1])
        gr_gid = property(lambda self: self[2])
        gr_mem = property(lambda self: self[3])

    entry = struct_group((USER, "x", GID, [USER]))

    def getgrgid(gid):
        if gid == GID:
            return entry
        raise KeyError(f"getgrgid(): gid not found: {gid}")

    def getgrnam(name):
        if name == USER:
            return entry
        raise KeyError(f"getgrnam(): name not found: {name!r}")

    module.struct_group = struct_group
    module.getgrgid = getgrgid
    module.getgrnam = getgrnam
    module.getgrall = lambda: [entry]
    return module


def _install_hashlib():
    import hashlib

    if not hasattr(hashlib, "pbkdf2_hmac"):
        hashlib.pbkdf2_hmac = pbkdf2_hmac
        if "pbkdf2_hmac" not in hashlib.__all__:
            hashlib.__all__ += ("pbkdf2_hmac",)


def pbkdf2_hmac(hash_name, password, salt, iterations, dklen=None):
    """Password-based key derivation function 2 (PKCS #5 v2.0, RFC 8018)
    with HMAC as the pseudorandom function, as `hashlib.pbkdf2_hmac`."""
    import hashlib
    import hmac

    if not isinstance(hash_name, str):
        raise TypeError(f"hash_name must be a str, not {type(hash_name).__name__}")
    password = bytes(memoryview(password))
    salt = bytes(memoryview(salt))
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    if iterations > 2**31 - 1:
        raise OverflowError("iteration value is too great.")
    inner = hashlib.new(hash_name)
    if dklen is None:
        dklen = inner.digest_size
    if dklen < 1:
        raise ValueError("key length must be greater than 0.")
    if dklen > 2**31 - 1:
        raise OverflowError("key length is too great.")
    mac = hmac.new(password, digestmod=hash_name)
    blocks = []
    length = 0
    index = 1
    while length < dklen:
        prf = mac.copy()
        prf.update(salt + index.to_bytes(4, "big"))
        u = prf.digest()
        result = int.from_bytes(u, "big")
        for _ in range(iterations - 1):
            prf = mac.copy()
            prf.update(u)
            u = prf.digest()
            result ^= int.from_bytes(u, "big")
        block = result.to_bytes(len(u), "big")
        blocks.append(block)
        length += len(block)
        index += 1
    return b"".join(blocks)[:dklen]


def _install_tempfile():
    from . import _tmpfs

    _tmpfs.install()


def _install_threading():
    import threading

    def refuse(*args, **kwargs):
        raise RuntimeError(_THREADS)

    if hasattr(threading, "_start_joinable_thread"):
        threading._start_joinable_thread = refuse
    if hasattr(threading, "_start_new_thread"):
        threading._start_new_thread = refuse


def _install_asyncio(module):
    from . import _aio

    _aio.install()


class _AfterImport:
    """A meta-path finder that runs a function right after a module's
    first import: the module is imported as usual, then patched."""

    def __init__(self):
        self.hooks = {}
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        hook = self.hooks.get(name)
        # `busy`: another finder asking the meta path again for the same
        # name must not come back here.
        if hook is None or self.busy:
            return None
        self.busy = True
        try:
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.busy = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            # Once: a reload is the module's own business.
            del self.hooks[name]
            spec.loader = _Patching(spec.loader, hook)
        return spec


class _Patching:
    def __init__(self, loader, hook):
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.hook(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


_FINDER = _AfterImport()


def _after_import(name, hook):
    if name in sys.modules:
        hook(sys.modules[name])
        return
    _FINDER.hooks[name] = hook
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
