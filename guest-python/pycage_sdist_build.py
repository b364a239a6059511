"""Build-time helper, never part of a handler's sandbox: builds one source
distribution into a wheel, inside the sandbox.

Runs inside componentize-py's pre-initialisation, where the host mounts a
private, empty scratch directory at /0 (read-write, bounded by the build's
disk limit), this module with `job.json` and the sdist archive at /1, and
the sdist's build requirements (pure wheels, installed by pycage) at /2.
The PEP 517 backend runs here, in CPython on WASI: there is no compiler and
no process to start, so a C extension cannot build, and a package with a
pure-Python fallback builds that. The host reads only /0/result.json and
the wheel it names.

Whatever happens ends up in result.json; then the import fails on
purpose (see `Finished`).
"""

import base64
import hashlib
import json
import os
import site
import sys
import tarfile
import traceback
import zipfile

WORK = "/0"
JOB = "/1/job.json"
BUILD_ENV = "/2"
RESULT = os.path.join(WORK, "result.json")

# Switches packages document for building without their C extensions
# (their pure-Python code is then used). Set for every build: there is no
# compiler here, so they can only avoid a failure, never lose speed.
PURE_BUILD_SWITCHES = {
    "MSGPACK_PUREPYTHON": "1",
    "DISABLE_SQLALCHEMY_CEXT": "1",
    "AIOHTTP_NO_EXTENSIONS": "1",
    "FROZENLIST_NO_EXTENSIONS": "1",
    "MULTIDICT_NO_EXTENSIONS": "1",
    "PROPCACHE_NO_EXTENSIONS": "1",
    "YARL_NO_EXTENSIONS": "1",
    "WRAPT_INSTALL_EXTENSIONS": "false",
    "PYRSISTENT_NO_C_EXTENSION": "1",
    "CIBUILDWHEEL": "0",
}

NATIVE_SUFFIXES = (".so", ".pyd", ".dylib", ".dll", ".wasm")


def write_result(**fields):
    with open(RESULT, "w", encoding="utf-8") as f:
        json.dump(fields, f)


def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def retag_pure(dist_dir, wheel_name):
    """A wheel setuptools tagged for this platform although it holds no
    extension module (the build declared one, then fell back): tag it
    `py3-none-any`, which is what it is. With an extension module inside,
    refuse."""
    parts = wheel_name[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise ValueError(f"unexpected wheel name {wheel_name!r}")
    if parts[-2:] == ["none", "any"]:
        return wheel_name
    source = os.path.join(dist_dir, wheel_name)
    with zipfile.ZipFile(source) as wheel:
        names = wheel.namelist()
        native = [n for n in names if n.lower().endswith(NATIVE_SUFFIXES)]
        if native:
            raise ValueError(f"the wheel contains native code: {', '.join(native[:5])}")
        pure_name = "-".join(parts[:-3] + ["py3", "none", "any"]) + ".whl"
        target = os.path.join(dist_dir, pure_name)
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
        wheel_meta = f"{dist_info}/WHEEL"
        record_name = f"{dist_info}/RECORD"
        lines = wheel.read(wheel_meta).decode("utf-8").splitlines()
        kept = [
            line for line in lines
            if not line.startswith(("Tag:", "Root-Is-Purelib:"))
        ]
        kept += ["Root-Is-Purelib: true", "Tag: py3-none-any"]
        new_meta = ("\n".join(kept) + "\n").encode("utf-8")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
            for info in wheel.infolist():
                if info.filename == record_name:
                    continue
                data = new_meta if info.filename == wheel_meta else wheel.read(info)
                out.writestr(info.filename, data)
            record = []
            for line in wheel.read(record_name).decode("utf-8").splitlines():
                if line.startswith(wheel_meta + ","):
                    line = f"{wheel_meta},{record_hash(new_meta)},{len(new_meta)}"
                record.append(line)
            out.writestr(record_name, "\n".join(record) + "\n")
    os.unlink(source)
    return pure_name


def build():
    with open(JOB, encoding="utf-8") as f:
        job = json.load(f)
    os.environ.update(PURE_BUILD_SWITCHES)
    site.addsitedir(BUILD_ENV)
    src_root = os.path.join(WORK, "src")
    dist_dir = os.path.join(WORK, "dist")
    os.makedirs(src_root)
    os.makedirs(dist_dir)
    # What the backend writes to a temporary directory stays in /0 too.
    os.environ["TMPDIR"] = os.path.join(WORK, "tmp")
    os.makedirs(os.environ["TMPDIR"])
    import tempfile
    tempfile.tempdir = os.environ["TMPDIR"]
    with tarfile.open(os.path.join("/1", job["archive"]), "r:gz") as archive:
        archive.extractall(src_root, filter="data")
    tops = os.listdir(src_root)
    if len(tops) != 1 or not os.path.isdir(os.path.join(src_root, tops[0])):
        raise ValueError("the archive does not hold exactly one top-level directory")
    source = os.path.join(src_root, tops[0])
    os.chdir(source)
    for entry in reversed(job.get("backend_path", [])):
        path = os.path.realpath(os.path.join(source, entry))
        if not (path + os.sep).startswith(source + os.sep) and path != source:
            raise ValueError(f"backend-path {entry!r} leaves the source tree")
        sys.path.insert(0, path)
    sys.path.insert(0, source)
    module_name, _, attribute = job["backend"].partition(":")
    import importlib
    backend = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        backend = getattr(backend, part)
    wheel_name = backend.build_wheel(dist_dir)
    if not isinstance(wheel_name, str) or "/" in wheel_name or not wheel_name.endswith(".whl"):
        raise ValueError(f"the backend returned {wheel_name!r}, not a wheel's file name")
    wheel_name = retag_pure(dist_dir, wheel_name)
    write_result(ok=True, wheel=f"dist/{wheel_name}")


# componentize-py carries on after this import; leave its state as found.
_saved_path, _saved_cwd, _saved_argv = list(sys.path), os.getcwd(), list(sys.argv)
try:
    build()
except BaseException as error:  # noqa: BLE001 - reported, never raised
    detail = "".join(traceback.format_exception(error))
    try:
        write_result(ok=False, error=f"{type(error).__name__}: {error}", detail=detail[-8000:])
    except BaseException:
        pass
finally:
    sys.path[:] = _saved_path
    # setuptools' backend rewrites sys.argv and leaves it so.
    sys.argv = _saved_argv
    try:
        os.chdir(_saved_cwd)
    except OSError:
        pass


class Finished(Exception):
    """Raised once the result is written: it stops componentize-py before
    it snapshots this interpreter (whose heap a build may have grown past
    what a snapshot takes) into a component nobody needs."""


raise Finished("the source build is done; see result.json")
