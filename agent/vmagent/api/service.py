"""The agent's servers, the pull API and the control socket, on one asyncio
event loop in one daemon thread; WAL reads and acks go to a few worker
threads.  The sweep loop stays in the main thread and reaches this one
only through a commit listener (`Commits.notify`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Coroutine

from vmagent.api import control, server, tls
from vmagent.api.commits import Commits
from vmagent.api.control import ControlServer
from vmagent.api.http import PullApi
from vmagent.api.server import HttpServer
from vmagent.api.source import EvidenceSource

WORKERS = 4  # threads for WAL reads, acks and status documents
CALL_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 10.0


class ApiService:
    def __init__(self, agent: EvidenceSource) -> None:
        server.raise_fd_limit()
        self.agent, self.log = agent, agent.log
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(
            WORKERS, thread_name_prefix="api-io"))
        self.loop.set_exception_handler(self._report)
        self._asyncio_log = _OneLine(self.log)
        logging.getLogger("asyncio").addHandler(self._asyncio_log)
        self.commits = Commits(self.loop)
        self.http: HttpServer | None = None
        self.control: ControlServer | None = None
        self._thread = threading.Thread(target=self._run, name="api",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run ``work`` on the loop and wait for it; its exception, if any,
        is raised here."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(
            CALL_TIMEOUT_S)

    def listen_api(self) -> None:
        """Serve ``[api] listen``: OSError when the address cannot be had,
        ConfigError for unusable TLS files."""
        cfg = self.agent.cfg
        context = tls.server_context(cfg)
        sock = server.bind(cfg.api.listen)
        self.http = HttpServer(PullApi(self.agent, self.commits), self.log,
                               cfg.api.client_timeout_s, context)
        self._call(self.http.start(sock))
        self.agent.commit_listeners.append(self.commits.notify)

    def listen_control(self) -> None:
        """Serve ``<state_dir>/control.sock``; OSError if it cannot be."""
        sock = control.bind(Path(self.agent.cfg.agent.state_dir))
        self.control = ControlServer(self.agent)
        self._call(self.control.start(sock))

    def stop(self) -> None:
        """Close the listeners and every connection, then the thread."""
        with contextlib.suppress(ValueError):
            self.agent.commit_listeners.remove(self.commits.notify)
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            except (futures.TimeoutError, asyncio.TimeoutError) as err:
                self.log.warning("api_stop_slow", error=repr(err))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()
        logging.getLogger("asyncio").removeHandler(self._asyncio_log)

    async def _shutdown(self) -> None:
        for part in (self.http, self.control):
            if part is not None:
                await part.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(self.loop.shutdown_default_executor(),
                               JOIN_TIMEOUT_S)

    def _report(self, _loop: asyncio.AbstractEventLoop,
                context: dict[str, Any]) -> None:
        """Whatever asyncio would print with a traceback: one line."""
        exc = context.get("exception")
        where = None
        if exc is not None and exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
        self.log.error("api_internal_error",
                       message=str(context.get("message"))[:200],
                       error=f"{type(exc).__name__}: {exc}"[:300]
                       if exc is not None else None, where=where)


class _OneLine(logging.Handler):
    """asyncio's own warnings as one structured line each, without the
    traceback the logging module would add."""

    def __init__(self, log: Any) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.warning("api_asyncio", message=record.getMessage()[:300])
