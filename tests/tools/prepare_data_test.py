#!/usr/bin/env python3
"""tools/prepare_data.py turns JSONL/text inputs into the llm.c shards the engine reads.

Usage: prepare_data_test.py SOURCE_DIR

Trains a small byte-level BPE tokenizer (vocab 300, <|endoftext|>) on generated text, so
nothing is downloaded, runs the tool on generated inputs and reads the shards back: each
document must appear as [eot] + its tokens, in input order, split into train and val as the
tool documents. Cases: bad lines (skip and fail), empty and .txt inputs, several shards and
worker counts (byte-identical), the val split, no documents, usage errors, the uint32 writer.

Exits 0 when every case passes, 1 when one fails, 77 (skipped) without `tokenizers`/numpy.
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

try:
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

EOT = "<|endoftext|>"
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega data shard token model train").split()


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_tokenizer(directory):
    """A byte-level BPE of vocab 300 with <|endoftext|>, saved as directory/tokenizer.json."""
    rng = random.Random(1)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((words(rng, 40) for _ in range(500)), trainer)
    path = os.path.join(directory, "tokenizer.json")
    tokenizer.save(path)
    return path


class Env:
    """The tool, the tokenizer and a scratch directory shared by the cases."""

    def __init__(self, source_dir, scratch):
        self.tool = os.path.join(source_dir, "tools", "prepare_data.py")
        self.scratch = scratch
        self.tokenizer_path = make_tokenizer(scratch)
        self.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        self.eot = self.tokenizer.token_to_id(EOT)
        self.count = 0

    def path(self, name):
        self.count += 1
        return os.path.join(self.scratch, f"{self.count:02d}-{name}")

    def run(self, inputs, out, *flags):
        """Runs the tool; returns the CompletedProcess (text)."""
        command = [sys.executable, self.tool, "--tokenizer", self.tokenizer_path, "--out", out,
                   *flags, *inputs]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def ok(self, inputs, out, *flags):
        result = self.run(inputs, out, *flags)
        assert result.returncode == 0, (
            f"prepare_data exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def stream(self, texts):
        """The expected tokens of documents: [eot] + encode(text) each, concatenated."""
        ids = []
        for text in texts:
            # The test tokenizer has no post-processor: encode(text) == encode(text, False).
            ids.append(self.eot)
            ids += self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids


def write_jsonl(path, records):
    """records: dicts (a JSON line each) or bytes (written as they are, then a newline)."""
    with open(path, "wb") as f:
        for record in records:
            f.write(record if isinstance(record, bytes) else json.dumps(record).encode())
            f.write(b"\n")
    return path


def read_shard(path, dtype="<u2", magic=20240520, version=1):
    data = open(path, "rb").read()
    assert len(data) >= 1024, f"{path}: {len(data)} bytes, shorter than the header"
    header = np.frombuffer(data[:1024], dtype="<i4")
    assert header[0] == magic, f"{path}: magic {header[0]}, expected {magic}"
    assert header[1] == version, f"{path}: version {header[1]}, expected {version}"
    assert not header[3:].any(), f"{path}: header[3:] is not all zeros"
    tokens = np.frombuffer(data[1024:], dtype=dtype)
    assert header[2] == len(tokens), (
        f"{path}: header counts {header[2]} tokens, the file holds {len(tokens)}")
    return tokens


def read_split(out, prefix):
    """The concatenated tokens of out/PREFIX_*.bin, checking the names are 000000, 1, ..."""
    names = sorted(n for n in os.listdir(out) if n.startswith(prefix + "_"))
    expected = [f"{prefix}_{i:06d}.bin" for i in range(len(names))]
    assert names == expected, f"{out}: {prefix} shards {names}, expected {expected}"
    parts = [read_shard(os.path.join(out, n)) for n in names]
    return np.concatenate(parts).tolist() if parts else []


def manifest(out):
    path = os.path.join(out, "prepare.json")
    assert os.path.isfile(path), f"{path} was not written"
    with open(path) as f:
        return json.load(f)


# ---- the cases --------------------------------------------------------------------------------

def bad_lines_file(env):
    """JSONL with good lines, 3 bad ones, an empty one and a ~5 MB line. Returns
    (path, good texts in order, {line number: what is wrong})."""
    rng = random.Random(2)
    huge = words(rng, 800_000)  # ~5 MB
    good = [words(rng, 20) for _ in range(6)]
    records = [{"text": good[0]}, {"text": good[1], "id": 1},
               b'{"text": "unterminated',                    # line 3: invalid JSON
               {"body": "no text key"},                       # line 4: missing key
               {"text": good[2]},
               b"",                                           # line 6: empty, skipped silently
               b'{"text": "\xff\xfe"}',                      # line 7: not UTF-8
               {"text": good[3]}, {"text": huge}, {"text": good[4]}, {"text": good[5]}]
    path = write_jsonl(env.path("bad.jsonl"), records)
    texts = good[:4] + [huge] + good[4:]
    return path, texts, {3: "JSON", 4: "key", 7: "UTF-8"}


def test_bad_lines_skipped(env, case):
    path, texts, bad = case
    out = env.path("skip")
    result = env.ok([path], out, "--workers", "2", "--val-fraction", "0")
    info = manifest(out)
    assert info["bad_lines"] == 3, f"bad_lines {info['bad_lines']}, expected 3"
    assert info["documents"] == {"train": len(texts), "val": 0}, (
        f"documents {info['documents']}, expected {len(texts)} train, 0 val")
    for line, what in bad.items():
        assert f"{path}:{line}:" in result.stderr, (
            f"stderr does not name {path}:{line} ({what}):\n{result.stderr}")
    assert f"{path}:6:" not in result.stderr, "the empty line 6 was reported as bad"
    assert f"{len(texts)} documents (3 bad lines skipped)" in result.stdout, (
        f"no summary line in stdout:\n{result.stdout}")
    expected = env.stream(texts)
    assert info["tokens"] == {"train": len(expected), "val": 0}, f"tokens {info['tokens']}"
    assert info["dtype"] == "uint16" and info["eot_id"] == env.eot, f"manifest {info}"
    assert info["shards"] == ["train_000000.bin"], f"shards {info['shards']}"
    got = read_split(out, "train")
    assert got == expected, "the shard's tokens differ from [eot] + encode(text) per document"
    assert not [n for n in os.listdir(out) if n.endswith(".partial")], "a .partial file is left"


def test_bad_lines_fail(env, case):
    path, _, _ = case
    out = env.path("fail")
    result = env.run([path], out, "--on-bad-line", "fail", "--workers", "1")
    assert result.returncode == 1, f"exit {result.returncode}, expected 1:\n{result.stderr}"
    assert f"{path}:3:" in result.stderr, f"stderr does not name {path}:3:\n{result.stderr}"
    assert f"{path}:4:" not in result.stderr, "the run went on past the first bad line"
    assert not os.path.exists(os.path.join(out, "prepare.json")), "prepare.json was written"
    left = os.listdir(out) if os.path.isdir(out) else []
    assert not left, f"files left in {out}: {left}"


def test_empty_and_txt(env):
    empty = env.path("empty.jsonl")
    open(empty, "wb").close()
    text = "First paragraph.\n\nSecond paragraph after a blank line.\nalpha beta\n"
    txt = env.path("doc.txt")
    with open(txt, "w") as f:
        f.write(text)
    out = env.path("txt")
    env.ok([empty, txt], out, "--val-fraction", "0", "--workers", "1")
    info = manifest(out)
    assert info["documents"] == {"train": 1, "val": 0}, f"documents {info['documents']}"
    assert info["inputs"] == [empty, txt], f"inputs {info['inputs']}"
    assert read_split(out, "train") == env.stream([text]), "the .txt is not one document"


def corpus(env, n, name):
    rng = random.Random(n)
    texts = [words(rng, rng.randint(1, 30)) for _ in range(n)]
    return write_jsonl(env.path(name), [{"text": t} for t in texts]), texts


def test_shards_and_workers(env):
    # 3000 documents: three batches of 1024 lines, so two workers do take turns.
    path, texts = corpus(env, 3000, "many.jsonl")
    one, small_1, small_2 = env.path("one"), env.path("w1"), env.path("w2")
    env.ok([path], one, "--val-fraction", "0.01", "--workers", "1")
    env.ok([path], small_1, "--val-fraction", "0.01", "--shard-tokens", "1000", "--workers", "1")
    env.ok([path], small_2, "--val-fraction", "0.01", "--shard-tokens", "1000", "--workers", "2")
    single, several = read_split(one, "train"), read_split(small_1, "train")
    shards = manifest(small_1)["shards"]
    train_shards = [s for s in shards if s.startswith("train_")]
    assert len(train_shards) > 2, f"--shard-tokens 1000 made {train_shards}"
    assert several == single, "the shards' concatenation differs from the one-shard stream"
    assert read_split(small_1, "val") == read_split(one, "val"), "val differs by shard size"
    for name in train_shards[:-1]:
        count = len(read_shard(os.path.join(small_1, name)))
        assert count == 1000, f"{name}: {count} tokens, expected 1000 (not the last shard)"
    assert single == env.stream(texts[:-30]), "train is not the first 2970 documents"
    names_1, names_2 = sorted(os.listdir(small_1)), sorted(os.listdir(small_2))
    assert names_1 == names_2, f"--workers 1 wrote {names_1}, --workers 2 {names_2}"
    for name in names_1:
        bytes_1 = open(os.path.join(small_1, name), "rb").read()
        bytes_2 = open(os.path.join(small_2, name), "rb").read()
        assert bytes_1 == bytes_2, f"{name} differs between --workers 1 and --workers 2"


def test_val_split(env):
    path, texts = corpus(env, 50, "val.jsonl")
    out = env.path("val")
    env.ok([path], out, "--val-fraction", "0.07", "--workers", "2")
    val_docs = -(-Fraction("0.07") * 50 // 1)  # ceil(3.5) = 4
    assert val_docs == 4
    info = manifest(out)
    assert info["documents"] == {"train": 46, "val": 4}, f"documents {info['documents']}"
    assert info["shards"] == ["train_000000.bin", "val_000000.bin"], f"shards {info['shards']}"
    assert read_split(out, "val") == env.stream(texts[-4:]), "val is not the last 4 documents"
    assert read_split(out, "train") == env.stream(texts[:-4]), "train is not the first 46"
    assert info["tokens"]["val"] == len(env.stream(texts[-4:])), f"tokens {info['tokens']}"

    # A run over an earlier run's directory replaces its shards: none of the old ones remain.
    env.ok([path], out, "--val-fraction", "0", "--workers", "1")
    assert manifest(out)["shards"] == ["train_000000.bin"], "the rerun's shards"
    assert not os.path.exists(os.path.join(out, "val_000000.bin")), "a stale val shard remains"
    assert read_split(out, "train") == env.stream(texts), "the rerun's train stream"


def test_no_documents(env):
    empty = env.path("nothing.jsonl")
    open(empty, "wb").close()
    only_bad = write_jsonl(env.path("only-bad.jsonl"), [b"[1, 2]", b"", b"not json"])
    out = env.path("none")
    result = env.run([empty, only_bad], out, "--workers", "1")
    assert result.returncode == 1, f"exit {result.returncode}, expected 1:\n{result.stderr}"
    assert "no documents" in result.stderr, f"no clear message:\n{result.stderr}"
    assert f"{only_bad}:1:" in result.stderr and f"{only_bad}:3:" in result.stderr, (
        f"the bad lines are not named:\n{result.stderr}")
    assert not os.path.exists(os.path.join(out, "prepare.json")), "prepare.json was written"


def test_usage_errors(env):
    path, _ = corpus(env, 3, "usage.jsonl")
    out = env.path("usage")
    result = env.run([path], out, "--shard-tokens", str(2**31))
    assert result.returncode == 2 and "--shard-tokens" in result.stderr, (
        f"--shard-tokens 2**31: exit {result.returncode}:\n{result.stderr}")
    missing = os.path.join(env.scratch, "missing.jsonl")
    result = env.run([missing], out)
    assert result.returncode == 2 and missing in result.stderr, (
        f"a missing input: exit {result.returncode}:\n{result.stderr}")
    if importlib.util.find_spec("pyarrow") is None:
        parquet = env.path("data.parquet")
        open(parquet, "wb").close()
        result = env.run([parquet], out)
        assert result.returncode == 2, f"parquet without pyarrow: exit {result.returncode}"
        assert "pip install pyarrow" in result.stderr and parquet in result.stderr, (
            f"parquet without pyarrow: {result.stderr}")


def test_uint32_writer(env):
    spec = importlib.util.spec_from_file_location("prepare_data", env.tool)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    path = env.path("wide.bin")
    tokens = [0, 65535, 65536, 128255, 2**32 - 1]
    module.write_shard(path, tokens, 128256)
    got = read_shard(path, dtype="<u4", magic=20240801, version=7).tolist()
    assert got == tokens, f"uint32 shard holds {got}, expected {tokens}"
    assert not os.path.exists(path + ".partial"), "write_shard left its .partial"
    narrow = env.path("narrow.bin")
    module.write_shard(narrow, [0, 1, 65535], 65536)
    assert read_shard(narrow).tolist() == [0, 1, 65535], "uint16 shard at vocab 65536"
    try:
        module.write_shard(env.path("overflow.bin"), [65536], 65536)
    except OverflowError:
        pass
    else:
        raise AssertionError("write_shard put 65536 in a uint16 shard")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    started = time.monotonic()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="prepare_data_test-") as scratch:
        env = Env(sys.argv[1], scratch)
        case = bad_lines_file(env)
        cases = [
            ("bad lines skipped", lambda: test_bad_lines_skipped(env, case)),
            ("bad line fails", lambda: test_bad_lines_fail(env, case)),
            ("empty jsonl and txt", lambda: test_empty_and_txt(env)),
            ("shards and workers", lambda: test_shards_and_workers(env)),
            ("val split", lambda: test_val_split(env)),
            ("no documents", lambda: test_no_documents(env)),
            ("usage errors", lambda: test_usage_errors(env)),
            ("uint32 writer", lambda: test_uint32_writer(env)),
        ]
        for name, run in cases:
            t0 = time.monotonic()
            try:
                run()
                print(f"PASS {name} ({time.monotonic() - t0:.1f} s)")
            except AssertionError as e:
                failures += 1
                print(f"FAIL {name}: {e}")
            except Exception as e:  # a broken case fails; the others still run
                failures += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    print(f"{len(cases) - failures}/{len(cases)} passed in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
