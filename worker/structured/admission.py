"""Where a constrained request waits for its grammar, so that compiling never blocks a step.

``StructuredAdmission.admit`` gives each of a request's sequences its fixed token constraints and
starts compiling its grammar; a request whose grammar is ready goes straight on to the scheduler,
the others wait here and ``take_compiled`` hands them over (or their compile error) at a later step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future

from mili.worker.engine.request import Request
from mili.worker.structured.compiler import GrammarCompilerService, GrammarError
from mili.worker.structured.matcher import GrammarState
from mili.worker.structured.token_constraints import TokenConstraints
from mili.worker.structured.vocabulary import tokenizer_info
from mili.worker.tokenizer import Tokenizer


class StructuredAdmission:
    def __init__(self, tokenizer: Tokenizer, model_vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self._vocab_size = model_vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._compiler: GrammarCompilerService | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[Request, Future]] = {}

    @property
    def compiler(self) -> GrammarCompilerService:
        """Built on first use (reading a large vocabulary takes a moment); shared by every thread."""
        with self._lock:
            if self._compiler is None:
                info = tokenizer_info(self.tokenizer, self._vocab_size, self._stop_token_ids)
                self._compiler = GrammarCompilerService(info)
            return self._compiler

    def admit(self, request: Request) -> bool:
        """Prepare ``request``'s sequences; True when they can be scheduled now."""
        constraints = TokenConstraints.of(request.params, self.tokenizer)
        for seq in request.seqs:
            seq.token_constraints = constraints
        structured = request.params.structured_outputs
        if structured is None:
            return True
        future = self.compiler.submit(structured.spec())
        if future.done() and future.exception() is None:
            self._attach(request, future)
            return True
        self._waiting[request.request_id] = (request, future)
        return False

    def take_compiled(self) -> tuple[list[Request], list[tuple[Request, str]]]:
        """Waiting requests whose grammar is now ready, and those whose grammar failed (with why)."""
        ready, failed = [], []
        for request_id, (request, future) in list(self._waiting.items()):
            if not future.done():
                continue
            del self._waiting[request_id]
            error = future.exception()
            if error is None:
                self._attach(request, future)
                ready.append(request)
            else:
                failed.append((request, str(error) if isinstance(error, GrammarError) else repr(error)))
        return ready, failed

    def forget(self, request_id: str) -> None:
        """An aborted request stops waiting."""
        self._waiting.pop(request_id, None)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @staticmethod
    def _attach(request: Request, future: Future) -> None:
        compiled = future.result()
        for seq in request.seqs:
            seq.grammar = GrammarState(compiled)
