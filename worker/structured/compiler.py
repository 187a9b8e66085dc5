"""Compiling grammars off the engine thread, once per source.

``GrammarCompilerService.submit`` starts a compile on its own threads and returns a future; equal
specs share one future (an LRU cache of the most recent sources), so a popular schema compiles once.
A compile that fails raises ``GrammarError`` naming the request field and the problem; waiting past
the timeout raises one too (the compile goes on and lands in the cache, so a retry may find it).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import xgrammar

from mili.worker.structured.schema_fixes import without_control_characters
from mili.worker.structured.spec import GrammarSpec

CACHE_SIZE = 512
DEFAULT_TIMEOUT_S = 30.0
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: "; the rest is for people.
_CPP_PREFIX = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")


class GrammarError(ValueError):
    """A grammar that cannot be used; ``param`` names the request field it came from, ``problem``
    says what is wrong with it (without naming the field, since equal grammars share one error)."""

    def __init__(self, message: str, param: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.problem = problem or message


class GrammarCompilerService:
    """Compiles ``GrammarSpec``s for one vocabulary on a small thread pool, cached by source."""

    def __init__(
        self, info: xgrammar.TokenizerInfo, threads: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.info = info
        self.timeout_s = timeout_s
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[GrammarSpec, Future] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, spec: GrammarSpec) -> Future:
        """The future compiled grammar of ``spec`` (shared with every earlier equal spec still cached)."""
        with self._lock:
            future = self._cache.get(spec)
            if future is not None:
                self._cache.move_to_end(spec)
                return future
            future = self._pool.submit(self._compile, spec)
            self._cache[spec] = future
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return future

    def compile(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        """Wait (up to the timeout) for ``spec``'s grammar; GrammarError if it fails or takes too long."""
        return result_of(self.submit(spec), spec, self.timeout_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        try:
            return self._compile_kind(spec)
        except GrammarError:
            raise
        except Exception as error:
            problem = readable(error)
            raise GrammarError(f"{spec.param} cannot be compiled: {problem}", spec.param, problem) from error

    def _compile_kind(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        compiler = self._compiler
        if spec.kind == "json":
            schema = json.dumps(without_control_characters(json.loads(spec.source)))
            return compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
        if spec.kind == "json_object":  # any object (xgrammar's builtin JSON grammar allows any value)
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
        if spec.kind == "regex":
            return compiler.compile_regex(spec.source)
        if spec.kind == "choice":
            return compiler.compile_grammar(choice_ebnf(json.loads(spec.source)))
        return compiler.compile_grammar(spec.source)


def result_of(future: Future, spec: GrammarSpec, timeout_s: float) -> xgrammar.CompiledGrammar:
    """The compiled grammar in ``future``, waiting at most ``timeout_s``."""
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout as error:
        problem = f"it did not compile within {timeout_s:g} s; simplify the schema or grammar"
        raise GrammarError(f"{spec.param}: {problem}", spec.param, problem) from error


def choice_ebnf(choices: list[str]) -> str:
    """An EBNF grammar matching exactly one of ``choices`` (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def readable(error: BaseException) -> str:
    """xgrammar's message without its C++ source location."""
    lines = [_CPP_PREFIX.sub("", line).strip() for line in str(error).strip().splitlines()]
    return " ".join(line for line in lines if line) or type(error).__name__
