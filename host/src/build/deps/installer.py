"""pycage's installer driver, run by the host's python3 (`python3 -I`).

It never runs a package's code: it fetches pycage's pinned pip, runs that
pip with the guest's environment markers, and fetches source distributions
(and reads their pyproject.toml) for the sandbox to build. Commands:

  fetch-pip URL SHA256 DEST
      Download the pinned pip wheel, check its hash, write DEST.
  pip PIP_WHEEL SHA256 MARKERS_JSON ARGS...
      Run that pip with `packaging`'s marker environment replaced by the
      guest's (CPython 3.14 on WASI), whatever interpreter runs it.
  fetch-sdist PIP_WHEEL SHA256 MARKERS_JSON REQUIREMENT DEST_DIR MAX_BYTES
      Find the newest source distribution on the index that satisfies
      REQUIREMENT and admits the guest's Python, download it (hash
      checked), and print a JSON line: file, sha256, build requirements,
      backend.
"""

import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

TIMEOUT = 60


def fail(message):
    sys.stderr.write(f"pycage installer: {message}\n")
    sys.exit(3)


def download(url, sha256, dest, max_bytes):
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        fail("only http(s) downloads are made")
    digest = hashlib.sha256()
    size = 0
    partial = dest + ".part"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(partial, "wb") as out:
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                fail(f"{url}: larger than {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(partial)
        fail(f"{url}: sha256 {digest.hexdigest()} is not the expected {sha256}")
    os.replace(partial, dest)


def use_pip(wheel, sha256, markers_json):
    """Import pip from its wheel (checked against its pinned hash), with the
    guest's markers."""
    with open(wheel, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != sha256:
            fail(f"{wheel}: not the pinned pip (sha256 mismatch); delete it to fetch it again")
    sys.path.insert(0, wheel)
    from pip._vendor.packaging import markers

    guest = json.loads(markers_json)
    markers.default_environment = lambda: dict(guest)
    _never_build()
    return guest


def _never_build():
    """pip builds a source distribution, a local directory or a direct URL
    requirement on the host even with --only-binary=:all: (a URL or path
    in a dependency's metadata or a build requirement gets there). This
    pip never does: it takes wheels found on the index or in --find-links,
    and nothing else, before anything is downloaded or run."""
    from pip._internal.distributions.sdist import SourceDistribution
    from pip._internal.exceptions import InstallationError
    from pip._internal.operations.prepare import RequirementPreparer
    from pip._internal.req.req_install import InstallRequirement

    def check(req):
        if req.editable or req.original_link is not None:
            raise InstallationError(
                f"pycage installs from the package index only; refused {req} "
                f"(a direct URL or path requirement)"
            )
        if req.link is not None and not req.link.is_wheel:
            raise InstallationError(
                f"pycage never builds on the host; refused {req.link.filename} "
                f"(not a wheel)"
            )

    def guard(method):
        def guarded(self, req, *args, **kwargs):
            check(req)
            return method(self, req, *args, **kwargs)
        return guarded

    def guard_many(method):
        def guarded(self, reqs, *args, **kwargs):
            reqs = list(reqs)
            for req in reqs:
                check(req)
            return method(self, reqs, *args, **kwargs)
        return guarded

    def refuse(self, *args, **kwargs):
        raise InstallationError("pycage never builds on the host")

    RequirementPreparer.prepare_linked_requirement = guard(
        RequirementPreparer.prepare_linked_requirement
    )
    RequirementPreparer.prepare_linked_requirements_more = guard_many(
        RequirementPreparer.prepare_linked_requirements_more
    )
    RequirementPreparer.prepare_editable_requirement = refuse
    SourceDistribution.prepare_distribution_metadata = refuse
    InstallRequirement.prepare_metadata = refuse


def fetch_pip(url, sha256, dest):
    download(url, sha256, dest, 64 << 20)


def index_url():
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/"


def fetch_sdist(wheel, sha256, markers_json, requirement, dest_dir, max_bytes):
    guest = use_pip(wheel, sha256, markers_json)
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_sdist_filename
    from pip._vendor.packaging.version import InvalidVersion

    wanted = Requirement(requirement)
    if wanted.url:
        fail(f"{requirement}: only index requirements are built from source")
    name = canonicalize_name(wanted.name)
    page = urllib.parse.urljoin(index_url(), f"{name}/")
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        listing = json.loads(response.read(32 << 20))
    python = guest["python_full_version"]
    best = None
    for entry in listing.get("files", []):
        filename = entry.get("filename", "")
        if (
            not filename.endswith(".tar.gz")
            or entry.get("yanked")
            or os.path.basename(filename) != filename
            or filename.startswith(".")
            or not filename.isprintable()
            or filename != filename.strip()
        ):
            continue
        try:
            dist, version = parse_sdist_filename(filename)
        except (ValueError, InvalidVersion):
            continue
        if dist != name or version.is_prerelease and not wanted.specifier.prereleases:
            continue
        if not wanted.specifier.contains(version, prereleases=True):
            continue
        requires_python = entry.get("requires-python")
        if requires_python and not SpecifierSet(requires_python).contains(python):
            continue
        sha256 = entry.get("hashes", {}).get("sha256")
        if not sha256:
            continue
        url = urllib.parse.urljoin(page, entry.get("url", ""))
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            continue
        if best is None or version > best[0]:
            best = (version, filename, url, sha256)
    if best is None:
        print(json.dumps({"found": False}))
        return
    version, filename, url, sha256 = best
    dest = os.path.join(dest_dir, filename)
    download(url, sha256, dest, max_bytes)
    requires, backend, backend_path = build_system(dest)
    print(json.dumps({
        "found": True,
        "file": filename,
        "sha256": sha256,
        "requires": requires,
        "backend": backend,
        "backend_path": backend_path,
    }))


LEGACY = (["setuptools>=40.8.0"], "setuptools.build_meta:__legacy__", [])


def build_system(archive):
    """[build-system] of the sdist's top-level pyproject.toml (PEP 517/518
    defaults without one). Reads that one member, bounded; extracts nothing."""
    import tarfile

    from pip._vendor import tomli

    with tarfile.open(archive, "r:gz") as tar:
        for count, member in enumerate(tar):
            if count > 200_000:
                fail(f"{os.path.basename(archive)}: too many members")
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "pyproject.toml" and member.isfile():
                if member.size > 1 << 20:
                    fail(f"{os.path.basename(archive)}: pyproject.toml is too large")
                text = tar.extractfile(member).read().decode("utf-8", "replace")
                break
        else:
            return LEGACY
    try:
        table = tomli.loads(text).get("build-system")
    except tomli.TOMLDecodeError as error:
        fail(f"{os.path.basename(archive)}: pyproject.toml: {error}")
    if not isinstance(table, dict) or "requires" not in table:
        return LEGACY
    requires = table.get("requires")
    backend = table.get("build-backend", LEGACY[1])
    backend_path = table.get("backend-path", [])
    if not (isinstance(requires, list) and all(isinstance(r, str) for r in requires)):
        fail(f"{os.path.basename(archive)}: [build-system] requires is not a list of strings")
    if not isinstance(backend, str) or not (
        isinstance(backend_path, list) and all(isinstance(p, str) for p in backend_path)
    ):
        fail(f"{os.path.basename(archive)}: malformed [build-system]")
    return requires, backend, backend_path


def main(argv):
    if len(argv) < 2:
        fail("no command")
    command, args = argv[1], argv[2:]
    try:
        if command == "fetch-pip" and len(args) == 3:
            fetch_pip(*args)
        elif command == "pip" and len(args) >= 3:
            use_pip(args[0], args[1], args[2])
            from pip._internal.cli.main import main as pip_main

            sys.exit(pip_main(args[3:]))
        elif command == "fetch-sdist" and len(args) == 6:
            fetch_sdist(args[0], args[1], args[2], args[3], args[4], int(args[5]))
        else:
            fail(f"unknown command {command!r}")
    except OSError as error:
        fail(f"{command}: {error}")


if __name__ == "__main__":
    main(sys.argv)
