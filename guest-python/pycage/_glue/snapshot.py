"""Shaping the interpreter state the snapshot keeps, at build time.

- `install_fresh_seed` reseeds `random` per instance, on first use;
- `prepare` (last) lists every live object for the host to make immortal
  in the memory image (host/src/build/immortal.rs), takes every free heap
  block so that requests allocate from the heap's top, and freezes the
  collector.
"""

import os
import sys

import pycage_build_config as config

# Set by `install_fresh_seed`: marks `random`'s generator due for a fresh
# seed, and ends the build's special case (see there). Called by `prepare`.
_random_due = None


def install_fresh_seed():
    """Give every instance its own `random` state, and pay for it only in
    the requests that use `random`.

    componentize-py's runtime calls `random.seed()` once in every new
    instance, before the first export call, so that instances do not share
    the state baked into the snapshot. Seeding MT19937 is ~3 µs of wasm
    plus an OS read, and most requests never draw a number. So the
    snapshot holds the generator *due* for a seed, with the module's
    functions (`random.random`, `choice`, `getstate`, ...) replaced by
    wrappers that seed first (32 bytes from the OS's CSPRNG seed MT19937 as
    unpredictably as CPython's own 2,496) and then put the bound methods
    back, so later calls cost nothing extra. The runtime's `random.seed()`
    finds the seed already due and does nothing.

    Installed before the handler is imported, and the wrappers stay in
    place for the whole build even when something draws a number: a name
    bound during the build (`from random import choice`) must be a
    wrapper, or it would draw from the snapshot's state in every instance.
    A name the handler replaced (a monkeypatch) is left alone. An explicit
    `random.seed(x)` seeds at once, exactly as before, and so does
    `random.seed()` when no seed is due.
    """
    global _random_due
    import random

    generator = random._inst
    seed = generator.seed
    # The module's functions are the generator's bound methods.
    methods = {
        name: value
        for name, value in vars(random).items()
        if getattr(value, "__self__", None) is generator and name != "seed"
    }
    state = {"due": False, "building": True}

    def swap(old, new):
        module = vars(random)
        for name in methods:
            if module.get(name) is old[name]:
                module[name] = new[name]

    def reseed():
        state["due"] = False
        seed(int.from_bytes(os.urandom(32), "little"))
        if not state["building"]:
            swap(wrappers, methods)

    def lazy(name, method):
        def call(*args, **kwargs):
            if state["due"]:
                reseed()
            return method(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = method.__doc__
        call.__wrapped__ = method
        return call

    wrappers = {name: lazy(name, method) for name, method in methods.items()}

    def mark_due(end_of_build=False):
        if end_of_build:
            state["building"] = False
        if not state["due"]:
            state["due"] = True
            swap(methods, wrappers)

    def fresh_seed(a=None, version=2):
        if a is None:
            if not state["due"]:
                reseed()
            return None
        state["due"] = False
        return seed(a, version)

    fresh_seed.__doc__ = seed.__doc__
    random.seed = fresh_seed
    swap(methods, wrappers)
    mark_due()
    _random_due = mark_due


def _list_snapshot_objects():
    """Write the address and type of every live object for the host.

    The host makes these objects immortal in the memory image (see
    host/src/build/immortal.rs): CPython then skips their reference counts, so a
    request that only reads the handler's functions, modules and constants
    no longer writes the pages they live on, and each instance has that many
    fewer pages to reset. The objects are returned to be kept alive, so
    every listed address still holds its object when the snapshot is taken.
    """
    import gc

    gc.collect()
    pending = gc.get_objects()
    seen = {}
    scratch = {id(pending), id(seen)}
    while pending:
        obj = pending.pop()
        key = id(obj)
        if key in seen or key in scratch:
            continue
        seen[key] = obj
        pending.extend(gc.get_referents(obj))
    is_immortal = getattr(sys, "_is_immortal", lambda obj: False)
    kept = tuple(obj for obj in seen.values() if not is_immortal(obj))
    del seen, pending
    # Plain bytes, not the array module: importing that registers an ABC,
    # which would invalidate every ABC cache the warm-up filled.
    listing = bytearray()
    for obj in kept:
        listing += id(obj).to_bytes(4, "little") + id(type(obj)).to_bytes(4, "little")
    with open(config.OBJECTS_PATH, "wb") as f:
        f.write(listing)
    return kept


# Filling stops after this many blocks in a row (16 KiB) came from the top
# of the heap, above every object; it never takes more than _MAX_FILLERS
# (64 MiB), should the top never be recognised.
_TOP_RUN = 1024
_MAX_FILLERS = 1 << 22


def _fill_free_memory(highest):
    """Take every free block of the heap, so requests allocate from its top.

    Importing modules at build time leaves thousands of freed blocks
    scattered over the ~13 MiB heap; a request's new objects would land in
    them, one here, one there, each writing a page of the snapshot that its
    reset then copies back. Once none is left, the allocator (dlmalloc: this
    CPython is built without pymalloc) serves every request from the top of
    the heap, where its objects sit together on a few pages: a hello
    request writes 75 pages instead of 111 (`bench --quick`).

    An `object()` is the smallest block (16 bytes), so allocating them takes
    every free block of any size: dlmalloc prefers any free block to the
    top. When blocks come out consecutively above every object that existed
    before, for 16 KiB, they come from the top, and filling stops. CPython's own
    free lists (floats, tuples, lists, dicts) are emptied first, for the
    same reason. The fillers are never touched again.
    """
    emptied = []
    for i in range(100):
        emptied.append([])
        emptied.append({})
        emptied.append(i + 0.5)
        for n in range(1, 21):
            emptied.append(tuple([None] * n))
    fillers = []
    consecutive = 0
    last = 0
    while consecutive < _TOP_RUN and len(fillers) < _MAX_FILLERS:
        obj = object()
        fillers.append(obj)
        here = id(obj)
        consecutive = consecutive + 1 if here > highest and here == last + 16 else 0
        last = here
    return emptied, fillers


def prepare():
    """The last build step: `random` due for a seed, immortal objects, no
    free blocks, frozen GC."""
    import gc

    # If the handler's import or the warm-up drew numbers, the generator
    # was seeded in the snapshot: due again, so that every instance seeds
    # its own and the runtime's `random.seed()` has nothing to write.
    _random_due(end_of_build=True)

    kept = _list_snapshot_objects()
    filled = _fill_free_memory(max(map(id, kept), default=0))
    # None of this is garbage: keep the collector from walking it (and
    # writing its headers) in a request.
    gc.freeze()
    return kept, filled
