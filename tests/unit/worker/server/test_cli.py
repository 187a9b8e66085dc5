"""The `mili` command line: `generate` prints a completion, bad flags exit 2 with the reason."""

from __future__ import annotations

from mili.worker import LLM, SamplingParams
from mili.worker.cli import build_parser, main


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
