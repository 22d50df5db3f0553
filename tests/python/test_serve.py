# SPDX-License-Identifier: Apache-2.0
"""headpage.serve: transformers' OpenAI-compatible server on a headpage pool,
started as its own process on the CPU with SmolLM2-135M-Instruct, asked by the
`openai` client from several threads at once, and stopped with SIGTERM."""
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

# Long enough that ada-snapkv at 50% compresses it (the short questions, 42 tokens
# with the chat template, keep their prompt: half is less than the 32-token window).
CONTEXT = ("Anna grew up in Lyon, studied chemistry in Berlin and now works as a baker in a "
           "small shop near the river. Her brother Tom lives in Madrid, where he teaches music "
           "at a school for children, and every summer the two of them travel to the sea. ")
# The two long prompts share no more than the chat template's first block: had
# one started on the other's cached blocks, too little of it would be left to
# compress beyond the window (a compressing request keeps a cached prefix whole).
QUESTIONS = [("What is the capital of France? Answer with one word.", "Paris"),
             ("What is 2 + 3? Answer with a number.", "5"),
             (CONTEXT * 2 + "What is the capital of France? Answer with one word.", None),
             ("Read this and answer. " + CONTEXT * 3 + "Where does Tom live?", None)]
NUM_PAGES = 4096


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    hf = pytest.importorskip("headpage.hf")
    path = hf.smollm2_gguf()
    model = f"{os.path.dirname(path)}:{os.path.basename(path)}"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "headpage.serve", model, "--num-pages", str(NUM_PAGES),
         "--policy", "ada-snapkv", "--budget", "50%", "--device", "cpu", "--dtype", "float32",
         "--max-batch-tokens", "256", "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            pytest.fail(f"headpage.serve exited with {process.returncode}:\n"
                        f"{process.stdout.read()}")
        try:
            if get_json(f"{base}/health").get("status") == "ok":
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"headpage.serve did not answer /health:\n{process.stdout.read()}")
        time.sleep(1)
    yield process, base, model
    if process.poll() is None:
        process.kill()
        process.wait()


def test_the_server_answers_concurrent_requests_compresses_and_stops_cleanly(server):
    process, base, model = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", timeout=300)

    def ask(question):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=16,
            temperature=0)
        return reply.choices[0].message.content, reply.usage

    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(ask, [q for q, _ in QUESTIONS]))
    for (question, expected), (content, usage) in zip(QUESTIONS, answers):
        assert content, f"no answer to {question!r}"
        assert 0 < usage.completion_tokens <= 16
        if expected is not None:
            assert expected in content, f"{question!r} answered {content!r}"

    # A prompt the pool can never hold (about 1 000 tokens; the pool holds 728 in
    # each of SmolLM2's 90 streams) is refused, and the server goes on serving.
    with pytest.raises(openai.BadRequestError, match="the pool has"):
        ask(CONTEXT * 20 + "Where does Tom live?")
    content, _ = ask(QUESTIONS[0][0])
    assert "Paris" in content

    stats = get_json(f"{base}/headpage/stats")["managers"]
    assert len(stats) == 1
    stats = stats[0]
    # The two long prompts were compressed; the short ones kept their prompt. The
    # second "capital of France" started on the blocks the first one left in the
    # prefix cache (on by default). Every request is done, so the pool holds only
    # cached blocks, which are free for the taking. (pages_freed_by_compression is
    # not checked: the cache keeps the compressed prompts' original blocks, so it
    # can be negative here.)
    assert stats["compressed"] == 2 and stats["skipped"] == 3
    assert stats["tokens_after"] < stats["tokens_before"]
    assert stats["prefix_hits"] >= 1 and stats["cached_pages"] == stats["cached_only_pages"] > 0
    assert stats["free_pages"] + stats["cached_only_pages"] == stats["num_pages"] == NUM_PAGES
    assert stats["sequences"] == 0 and stats["preemptions"] == 0

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("headpage.serve did not stop within 60 s of SIGTERM")
    assert process.returncode == 0, process.stdout.read()


def test_bad_arguments_are_refused_before_anything_loads():
    for bad, message in ((["--num-pages", "0"], "--num-pages must be positive"),
                         (["--num-pages", "64", "--policy", "ada-snapkv"], "needs a budget"),
                         (["--num-pages", "64", "--policy", "nope", "--budget", "20%"], "nope"),
                         (["--kv-gib", "-1"], "--kv-gib must be positive"),
                         (["--num-pages", "64", "--policy", "ada-snapkv", "--budget", "20%",
                           "--compress-every", "8"], "shorter than the policy")):
        run = subprocess.run([sys.executable, "-m", "headpage.serve", "some/model", *bad],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr, (bad, run.stderr)
