"""The `mili` command line: `generate` prints a completion, bad flags exit 2 with the reason."""

from __future__ import annotations

from mili.worker import LLM, SamplingParams
from mili.worker.cli import build_parser, main, server_limits
from mili.worker.server.app import normalize_api_key
from mili.worker.server.limits import HealthLimits, ServerLimits


def test_generate_prints_the_chat_completion(tiny_qwen3_dir, capsys):
    assert (
        main(
            [
                "generate",
                "Hello there",
                "--model",
                str(tiny_qwen3_dir),
                "--max-tokens",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    llm = LLM(model=str(tiny_qwen3_dir), device="cpu")
    expected = llm.chat(
        [{"role": "user", "content": "Hello there"}], SamplingParams(temperature=0.0, max_tokens=6)
    )
    assert capsys.readouterr().out == expected[0].outputs[0].text + "\n"


def test_generate_raw_skips_the_chat_template(tiny_qwen3_dir, capsys):
    argv = [
        "generate",
        "The quick",
        "--raw",
        "--model",
        str(tiny_qwen3_dir),
        "--max-tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    llm = LLM(model=str(tiny_qwen3_dir), device="cpu")
    expected = llm.generate("The quick", SamplingParams(temperature=0.0, max_tokens=6))
    assert capsys.readouterr().out == expected[0].outputs[0].text + "\n"


def test_serve_flags_are_named_like_vllm(monkeypatch):
    monkeypatch.setenv("MILI_API_KEY", "from-env")
    argv = "serve --model builtin:x --port 9000 --served-model-name m --max-model-len 64 --block-size 32"
    argv += " --max-num-seqs 8 --max-num-batched-tokens 512 --gpu-memory-utilization 0.5 --no-prefix-caching"
    args = build_parser().parse_args([*argv.split(), "--kernels", "torch", "--dtype", "float32"])
    assert (args.served_name, args.port, args.max_model_len, args.block_size) == ("m", 9000, 64, 32)
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.gpu_memory_utilization) == (8, 512, 0.5)
    assert args.prefix_caching is False and args.kernels == "torch" and args.dtype == "float32"
    assert args.api_key == "from-env"


def test_a_bad_flag_value_exits_2_naming_it(capsys):
    assert main(["serve", "--block-size", "7"]) == 2
    assert "block_size" in capsys.readouterr().err


def test_a_set_but_blank_api_key_refuses_to_start(monkeypatch, capsys):
    monkeypatch.setenv("MILI_API_KEY", " \n")
    assert main(["serve", "--model", "builtin:x"]) == 2
    error = capsys.readouterr().err
    assert "API key" in error and "blank" in error


def test_the_api_key_is_stripped_of_whitespace():
    assert normalize_api_key("sekret\n") == "sekret"  # a Secret made with --from-file
    assert normalize_api_key(None) is None


def test_server_limit_flags_reach_the_server_limits(capsys):
    argv = "serve --max-queued-requests 7 --max-request-bytes 4096 --health-max-failed-steps 5"
    args = build_parser().parse_args([*argv.split(), "--health-stall-timeout", "9.5"])
    assert server_limits(args) == ServerLimits(7, 4096, HealthLimits(max_failed_steps=5, stall_timeout_s=9.5))
    defaults = server_limits(build_parser().parse_args(["serve"]))
    assert (defaults.max_queued_requests, defaults.max_request_bytes) == (1024, 16 * 2**20)
    assert main(["serve", "--max-queued-requests", "0"]) == 2
    assert "max queued requests" in capsys.readouterr().err
