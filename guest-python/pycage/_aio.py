"""asyncio inside the sandbox: an event loop that waits on WASI pollables.

CPython's own loops select on sockets, starting with a self-pipe made by
`socket.socketpair`, which the sandbox refuses. `PollLoop` keeps all of
asyncio's scheduling (`BaseEventLoop`: tasks, futures, timers, `gather`,
`wait_for`, timeouts) and replaces only the wait: the pollables that
capabilities hand out (an outbound response arriving, a body stream ready)
plus a monotonic-clock pollable for the next timer, in one `wasi:io/poll`
call. There are no sockets, pipes, subprocesses, signals or threads to
wait on.

`install()` makes it the loop asyncio creates (`asyncio.run`,
`asyncio.new_event_loop`, `asyncio.EventLoop`); the framework runs `async
def` handlers on it. The request's deadline still ends everything: the
host stops the instance whatever the loop is waiting for.
"""

__all__ = ["drop_pollable", "install", "loop_class", "run"]

# asyncio is imported on first use, not with pycage: a handler that never
# awaits anything keeps it out of its snapshot (see the glue's warm-up).
_loop_class = None
_installed = False


class _PollSelector:
    """What `BaseEventLoop._run_once` calls `select(timeout)` on: the
    pollables the loop waits for, each with the future it completes. The
    loop owns them: each is dropped once it fires or is forgotten."""

    def __init__(self):
        self.waiting = []  # (pollable, future)

    def select(self, timeout):
        from wit_world.imports import io_poll, monotonic_clock

        if not self.waiting:
            if timeout is None:
                raise RuntimeError(
                    "the event loop has nothing to wait for: no timer and no I/O is pending, "
                    "so what is awaited can never arrive"
                )
            if timeout > 0:
                with monotonic_clock.subscribe_duration(_nanos(timeout)) as clock:
                    clock.block()
            return []
        pollables = [p for p, _ in self.waiting]
        if timeout is not None and timeout <= 0:
            return [i for i, p in enumerate(pollables) if p.ready()]
        clock = None
        if timeout is not None:
            clock = monotonic_clock.subscribe_duration(_nanos(timeout))
            pollables.append(clock)
        try:
            ready = io_poll.poll(pollables)
        finally:
            if clock is not None:
                drop_pollable(clock)
        return [i for i in ready if i < len(self.waiting)]

    def fired(self, indices):
        """Complete and drop the pollables at `indices` (from `select`)."""
        done = set(indices)
        for index in sorted(done):
            pollable, future = self.waiting[index]
            if not future.done():
                future.set_result(None)
            drop_pollable(pollable)
        self.waiting = [w for i, w in enumerate(self.waiting) if i not in done]

    def forget(self, pollable):
        """Drop `pollable` now if the loop still holds it."""
        for index, (held, future) in enumerate(self.waiting):
            if held is pollable:
                del self.waiting[index]
                future.cancel()
                drop_pollable(held)
                return

    def close(self):
        waiting, self.waiting = self.waiting, []
        for pollable, future in waiting:
            future.cancel()
            drop_pollable(pollable)


def drop_pollable(pollable):
    """Drop a pollable now; safe to call twice (a dropped one has no handle)."""
    if pollable.handle is not None:
        pollable.__exit__(None, None, None)


# Loops holding pollables, kept reachable until closed: an unclosed loop
# (with the tasks, generators and parent resources behind its pollables)
# must never become cyclic garbage, whose finalizers run in no particular
# order and could drop a parent before its pollable (which traps). Each
# request's instance ends soon anyway.
_HOLDING = set()


def _nanos(seconds):
    return max(1, int(seconds * 1e9))


def loop_class():
    """`PollLoop`, an asyncio event loop for a WASI instance (module docs)."""
    global _loop_class
    if _loop_class is not None:
        return _loop_class
    from asyncio import base_events

    class PollLoop(base_events.BaseEventLoop):
        def __init__(self):
            super().__init__()
            self._selector = _PollSelector()

        def _process_events(self, event_list):
            self._selector.fired(event_list)

        def _write_to_self(self):
            # Only another thread needs to wake the loop; there are none.
            pass

        def close(self):
            if not self.is_closed() and not self.is_running():
                self._selector.close()
                _HOLDING.discard(self)
            super().close()

        def wait_ready(self, pollable):
            """A future done when `pollable` is ready; the loop owns the
            pollable from now on."""
            future = self.create_future()
            self._selector.waiting.append((pollable, future))
            _HOLDING.add(self)
            return future

        def run_in_executor(self, executor, func, *args):
            # BaseEventLoop would make a thread pool first, which then
            # fails again in asyncio.run's shutdown: refuse before that.
            raise RuntimeError(
                "threads are not available in the pycage sandbox (WASI has no threads): "
                "run_in_executor, asyncio.to_thread and loop.getaddrinfo cannot work here"
            )

        def forget(self, pollable):
            self._selector.forget(pollable)

        def _unsupported(self, *args, **kwargs):
            raise NotImplementedError(
                "pycage's event loop has no sockets, pipes, subprocesses or signals "
                "(for HTTP, use pycage.fetch_async)"
            )

        add_reader = add_writer = remove_reader = remove_writer = _unsupported
        sock_recv = sock_recv_into = sock_sendall = sock_connect = sock_accept = _unsupported
        create_connection = create_server = create_datagram_endpoint = _unsupported
        create_unix_connection = create_unix_server = connect_read_pipe = _unsupported
        connect_write_pipe = subprocess_exec = subprocess_shell = _unsupported
        add_signal_handler = remove_signal_handler = _unsupported

    PollLoop.__module__ = "pycage"
    _loop_class = PollLoop
    return PollLoop


def install():
    """Make `PollLoop` the loop asyncio creates in this interpreter
    (`asyncio.run`, `asyncio.new_event_loop`, `asyncio.EventLoop`)."""
    global _installed
    if _installed:
        return
    import asyncio
    from asyncio import events

    class Policy(events._BaseDefaultEventLoopPolicy):
        _loop_factory = loop_class()

    events._set_event_loop_policy(Policy())
    asyncio.EventLoop = loop_class()
    _installed = True


def run(awaitable):
    """Run `awaitable` to completion on a new loop: how the framework runs
    an `async def` handler."""
    import asyncio

    install()

    async def main():
        return await awaitable

    return asyncio.run(main())
