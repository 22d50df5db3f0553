#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Rebuilds the prompt files in tools/prompts/ from their sources.

The committed prompt files are what tools/make_traces.sh uses; this script only
documents (and reproduces) how they were made. It needs:
  - Debian's packages bible-kjv, bible-kjv-text and dict-jargon, which it fetches
    with `apt-get download` and unpacks with `dpkg -x` into a scratch folder
    (nothing is installed);
  - the model's tokenizer, to fill each prompt up to a token budget
    (run it with the capture venv: .venv-capture/bin/python);
  - this repository's C++ sources (for the code prompts).

A .txt prompt file is the user message of a chat; a .json one is a list of chat
messages (the few-shot examples as earlier turns). capture_trace.py applies the
model's chat template around them.

Usage:
  .venv-capture/bin/python tools/prompts/make_prompts.py \
      --model .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import base64
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Bundled traces are ~1.2K prompt tokens; the large ones 4K (make_traces.sh --large).
SMALL_TOKENS = 1200
LARGE_TOKENS = 4096

NEEDLE = ("The keeper of the lighthouse at Port Averill hides the spare key "
          "under a blue stone shaped like a turtle.")
NEEDLE_QUESTION = ("Where does the keeper of the lighthouse at Port Averill hide "
                   "the spare key?")


def fetch_debs(workdir):
    """apt-get download + dpkg -x; returns the unpacked root."""
    root = os.path.join(workdir, "root")
    os.makedirs(root, exist_ok=True)
    subprocess.run(["apt-get", "download", "bible-kjv", "bible-kjv-text", "dict-jargon"],
                   cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    for name in sorted(os.listdir(workdir)):
        if name.endswith(".deb"):
            subprocess.run(["dpkg", "-x", os.path.join(workdir, name), root], check=True)
    return root


def kjv_verses(root, spec):
    """[(ref, text)] for a verse range such as 'Jonah1:1-4:11'."""
    out = subprocess.run(
        [os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"),
         "-f", "-l100000", spec], check=True, capture_output=True, text=True).stdout
    verses = []
    for line in out.splitlines():
        m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line)
        if m:
            verses.append(((m.group(1), int(m.group(2)), int(m.group(3))), m.group(4).strip()))
    if not verses:
        sys.exit(f"no verses for {spec}")
    return verses


def kjv_book_text(verses):
    """Chapters as paragraphs headed 'Chapter N', verse numbers dropped."""
    parts, chapter = [], None
    for (book, ch, _), text in verses:
        if ch != chapter:
            parts.append(f"\n\nChapter {ch}\n\n" if parts else f"Chapter {ch}\n\n")
            chapter = ch
        else:
            parts.append(" ")
        parts.append(text)
    return "".join(parts).strip()


def jargon_entries(root):
    """[(headword, definition)] from dictd's jargon database, in file order."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s):
        n = 0
        for c in s:
            n = n * 64 + alphabet.index(c)
        return n

    base = os.path.join(root, "usr/share/dictd/jargon")
    with gzip.open(base + ".dict.dz", "rb") as f:
        data = f.read()
    entries = []
    with open(base + ".index", encoding="utf-8") as f:
        for line in f:
            word, off, length = line.rstrip("\n").split("\t")
            if word.startswith("00database"):
                continue
            body = data[b64(off):b64(off) + b64(length)].decode("utf-8")
            entries.append((b64(off), body))
    entries.sort()
    out = []
    for _, body in entries:
        lines = body.split("\n")
        head = lines[0].strip()
        # Line 2 is " /pronunciation/, n." or " n."; the definition follows, indented.
        text = " ".join(l.strip() for l in lines[2:] if l.strip())
        text = re.sub(r"\{([^}]*)\}", r"\1", text)
        text = re.sub(r"\s+", " ", text).strip()
        out.append((head, text))
    return out


def fewshot_examples(entries):
    """Jargon entries usable as 'what does X mean? -> first sentence' examples."""
    picked = []
    for head, text in entries:
        if not (120 <= len(text) <= 600) or not head.isascii() or RUDE.search(head + " " + text):
            continue
        if re.match(r"^\d\.", text) or "See " in text[:20]:
            continue  # several senses, or a bare cross-reference
        answer = re.sub(r"^(\[[^\]]*\]\s*)+", "", text)  # drop [origin] notes
        answer = re.split(r"(?<=[.!?])\s", answer)[0]
        if 30 <= len(answer) <= 250 and answer.endswith("."):
            picked.append((head, answer))
    return picked


# Entries left out of the few-shot prompt for their language.
RUDE = re.compile(r"testicle|\bsex|fuck|shit|\bpiss|obscen|\brude\b|penis|\bass\b|bitch|"
                  r"porn|drug|suicid|\bkill", re.IGNORECASE)


class Counter:
    def __init__(self, model):
        from transformers import AutoTokenizer
        if model.endswith(".gguf"):
            self.tok = AutoTokenizer.from_pretrained(os.path.dirname(model),
                                                     gguf_file=os.path.basename(model))
        else:
            self.tok = AutoTokenizer.from_pretrained(model)

    def __call__(self, prompt):
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


def fill(count, build, units, budget):
    """The largest prefix of `units` whose built prompt fits the token budget."""
    lo, hi = 1, len(units)
    if count(build(units[:1])) > budget:
        sys.exit("budget too small")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(build(units[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return build(units[:lo])


def summary_prompt(where, text):
    return (f"Below is the text of {where} from the King James Version of the Bible.\n\n"
            f"{text}\n\n"
            "Summarize the story above in a few sentences: who the main characters "
            "are, what happens to them, and how it ends.")


def needle_builder(depth):
    def build(verses):
        k = round(len(verses) * depth)
        lines = verses[:k] + [NEEDLE] + verses[k:]
        return ("Below is a long passage of proverbs from the King James Version of the "
                "Bible. Read it carefully; a question about it follows.\n\n"
                + "\n".join(lines)
                + f"\n\nQuestion: {NEEDLE_QUESTION} Answer in one sentence.")
    return build


def fewshot_builder(final):
    """A multi-turn chat: each example is a user question and the assistant's answer."""
    question = "In hacker slang (the Jargon File), what does \u201c{}\u201d mean?"

    def build(examples):
        msgs = []
        for head, answer in examples:
            msgs += [{"role": "user", "content": question.format(head)},
                     {"role": "assistant", "content": answer}]
        msgs.append({"role": "user", "content": question.format(final)})
        return msgs
    return build


def code_prompt(paths, question):
    parts = ["Below are C++ source files from headpage, a paged KV cache library for "
             "LLM serving.\n"]
    for p in paths:
        with open(os.path.join(REPO, p), encoding="utf-8") as f:
            parts.append(f"File {p}:\n```cpp\n{f.read().strip()}\n```\n")
    parts.append(question)
    return "\n".join(parts)


def write(name, prompt, count):
    """A text file (one user message) or, for a list of messages, a JSON file."""
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        if isinstance(prompt, list):
            json.dump(prompt, f, ensure_ascii=False, indent=1)
            f.write("\n")
        else:
            f.write(prompt.rstrip("\n") + "\n")
    print(f"{name}: {count(prompt)} tokens with the chat template")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="tokenizer: a GGUF file or HF folder")
    ap.add_argument("--debs", help="an unpacked root from an earlier run (skips apt-get)")
    args = ap.parse_args()
    count = Counter(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.debs or fetch_debs(tmp)

        # summary: a whole short story (Daniel 6, the lions' den), and the story of
        # Joseph from Genesis 37 on, as many whole chapters as fit in 4K tokens.
        write("summary.txt", summary_prompt(
            "Daniel, chapter 6", kjv_book_text(kjv_verses(root, "Daniel6:1-6:28"))), count)
        joseph = kjv_verses(root, "Genesis37:1-50:26")
        chapters = sorted({ch for (_, ch, _), _ in joseph})
        write("summary-4k.txt", fill(count, lambda chs: summary_prompt(
            f"Genesis, chapters 37 to {chs[-1]}",
            kjv_book_text([v for v in joseph if v[0][1] in chs])), chapters, LARGE_TOKENS), count)

        # needle: Proverbs then Ecclesiastes as the haystack, needle at 40% / 65% depth.
        verses = [t for _, t in kjv_verses(root, "Proverbs1:1-31:31")]
        verses += [t for _, t in kjv_verses(root, "Ecclesiastes1:1-12:14")]
        write("needle.txt", fill(count, needle_builder(0.40), verses, SMALL_TOKENS), count)
        write("needle-4k.txt", fill(count, needle_builder(0.65), verses, LARGE_TOKENS), count)

        # few-shot QA: a chat of questions about Jargon File terms, each answered
        # with the first sentence of its entry; the last question is left open.
        examples = fewshot_examples(jargon_entries(root))
        pool = [e for e in examples if e[0] != "bikeshedding"]
        write("fewshot-qa.json", fill(count, fewshot_builder("bikeshedding"), pool[::6], SMALL_TOKENS), count)
        write("fewshot-qa-4k.json", fill(count, fewshot_builder("bikeshedding"), pool[::2], LARGE_TOKENS), count)

    # code: this repository's own sources (whole files, as many as fit for 4K).
    write("code.txt", code_prompt(
        ["blockmgr/block_table.h"],
        "Explain the layout of BlockTableCsr: how to find the pages of row r, what the "
        "spare entries of a row are for, and when the table has to be rebuilt."), count)
    question = ("Explain how these files work together: how pages are allocated and "
                "reference-counted, and how a block table maps a stream's tokens to pages.")
    files = []
    for f in ["allocator/page_pool.h", "allocator/page_pool.cc", "blockmgr/block_table.h",
              "core/paged_kv.h", "kernels/gather_kv_args.h", "kernels/gather_kv.h",
              "core/geometry.h", "core/status.h"]:
        if count(code_prompt(files + [f], question)) <= LARGE_TOKENS:
            files.append(f)
    write("code-4k.txt", code_prompt(files, question), count)

if __name__ == "__main__":
    main()
