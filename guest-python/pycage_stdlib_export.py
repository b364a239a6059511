"""Build-time helper, never part of a handler's sandbox.

Runs once per pycage version inside componentize-py's pre-initialisation,
where the bundled CPython standard library is mounted at /python and a host
directory owned by pycage at /0. It copies the library to /0/python and puts
an unchecked-hash .pyc beside every module, so that a handler importing a
stdlib module lazily at request time (from a read-only mount) loads bytecode
instead of recompiling the source on every request.
"""

import os
import py_compile
import shutil
import sys

SOURCE = "/python"
TARGET = "/0/python"
failed = []
compiled = 0

for root, dirs, files in os.walk(SOURCE):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    relative = os.path.relpath(root, SOURCE)
    out_dir = TARGET if relative == "." else os.path.join(TARGET, relative)
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(files):
        src = os.path.join(root, name)
        dst = os.path.join(out_dir, name)
        shutil.copyfile(src, dst)
        if not name.endswith(".py"):
            continue
        cache_dir = os.path.join(out_dir, "__pycache__")
        cfile = os.path.join(cache_dir, f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")
        try:
            # dfile keeps tracebacks pointing at /python, where the runtime mounts it.
            py_compile.compile(
                dst, cfile=cfile, dfile=src, doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            compiled += 1
        except py_compile.PyCompileError:
            failed.append(src)

with open("/0/export-report.txt", "w") as f:
    f.write(f"compiled {compiled}\nfailed {len(failed)}\n")
    f.writelines(path + "\n" for path in failed)


class Handler:
    """Unused: present so the component satisfies the world's exports."""
