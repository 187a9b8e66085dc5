"""The grammar compiler service: off-thread, cached by source, errors and timeouts name the field."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from mili.worker.structured.compiler import GrammarCompilerService, GrammarError, readable, result_of
from mili.worker.structured.spec import GrammarSpec, StructuredOutputsParams
from mili.worker.structured.vocabulary import tokenizer_info
from mili.worker.tokenizer import Tokenizer
from mili_testing.tiny_models import save_tokenizer


@pytest.fixture(scope="module")
def compiler(tmp_path_factory) -> GrammarCompilerService:
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(directory)
    tokenizer = Tokenizer.from_pretrained(directory)
    return GrammarCompilerService(tokenizer_info(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids))


def test_equal_sources_share_one_compile(compiler):
    first = compiler.submit(GrammarSpec.json_schema({"type": "object"}, "response_format"))
    second = compiler.submit(GrammarSpec.json_schema('{"type": "object"}', "structured_outputs.json"))
    assert first is second
    assert compiler.compile(GrammarSpec.json_schema({"type": "object"}, "x")) is first.result()
    assert compiler.submit(GrammarSpec.json_schema({"type": "array"}, "x")) is not first


def test_compiles_run_off_the_calling_thread(compiler):
    names = []
    original = compiler._compile_kind

    def spy(spec):
        names.append(threading.current_thread().name)
        return original(spec)

    compiler._compile_kind = spy
    try:
        compiler.compile(GrammarSpec("regex", "[a-z]{4}-off-thread", "x"))
    finally:
        del compiler._compile_kind
    assert names and names[0].startswith("grammar-compile")


@pytest.mark.parametrize(
    "spec, words",
    [
        (GrammarSpec("regex", "(", "structured_outputs.regex"), ["structured_outputs.regex", "parenthesis"]),
        (
            GrammarSpec("grammar", "root ::= missing", "structured_outputs.grammar"),
            ["missing", "not defined"],
        ),
        (GrammarSpec.json_schema({"type": "nonsense"}, "response_format"), ["response_format", "nonsense"]),
    ],
)
def test_a_grammar_that_cannot_compile_is_an_error_naming_the_field(compiler, spec, words):
    with pytest.raises(GrammarError) as raised:
        compiler.compile(spec)
    assert raised.value.param == spec.param
    assert all(word in str(raised.value) for word in words)
    assert ".cc:" not in str(raised.value)  # no C++ source locations for clients


def test_waiting_past_the_timeout_is_an_error():
    with pytest.raises(GrammarError, match=r"did not compile within 0\.01 s"):
        result_of(Future(), GrammarSpec("regex", "x", "structured_outputs.regex"), 0.01)


def test_structured_outputs_params_need_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="regex, choice"):
        StructuredOutputsParams(regex="a", choice=["b"])
    assert StructuredOutputsParams(choice=["a", "b"]).spec().kind == "choice"
    with pytest.raises(ValueError, match="not valid JSON"):
        StructuredOutputsParams(json="{").spec()


def test_choice_and_json_object_compile(compiler):
    compiler.compile(StructuredOutputsParams(choice=['say "hi"', "bye\n"]).spec())
    compiler.compile(StructuredOutputsParams(json_object=True).spec())


def test_readable_strips_the_cpp_location():
    assert readable(RuntimeError("[10:23:37] /project/cpp/x.cc:83: Bad thing")) == "Bad thing"
