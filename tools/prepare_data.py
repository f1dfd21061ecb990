#!/usr/bin/env python3
"""Tokenize text corpora into llm.c token shards (data.format "llmc", docs/data.md).

Usage:
  prepare_data.py --tokenizer DIR_OR_tokenizer.json --out OUT_DIR [--text-key text]
                  [--val-fraction 0.005] [--shard-tokens 100000000] [--workers N]
                  [--on-bad-line skip|fail] [--eot-id N] [--progress] INPUT...

INPUT is a file, a directory (searched recursively) or a glob. Files by extension:
  .jsonl, .json  JSON lines: one object per line, the document's text under --text-key.
                 Empty lines are skipped; a bad line (invalid UTF-8 or JSON, not an object,
                 no --text-key, a value that is not a string) is reported as FILE:LINE and
                 skipped (--on-bad-line skip, the default) or ends the run (fail).
  .txt           the whole file is one document.
  .parquet       the --text-key column, one document a row (needs pyarrow).
Documents keep the input order (files in the order given, a directory's files sorted).
A document is tokenized whole, with no limit on a line's length; `tokenizers` holds roughly
140 times the text in memory while it does (about 6 GB for a 42 MB document).

Each document is tokenized with the Hugging Face `tokenizers` library (Tokenizer.from_file;
a directory means DIR/tokenizer.json, no special tokens added) in --workers processes, and is
preceded by the end-of-text token (as llm.c does): --eot-id, else the first of <|endoftext|>,
</s>, <eos>, <|end_of_text|>, [SEP] (BERT's) the tokenizer knows. The output does not depend on --workers.

Output in OUT_DIR, llm.c's format: a header of 256 little-endian int32 (magic, version, token
count, then zeros) followed by the tokens, little-endian:
  vocab <= 65536: magic 20240520, version 1, uint16 tokens
  vocab >  65536: magic 20240801, version 7, uint32 tokens
  train_000000.bin, train_000001.bin, ...  at most --shard-tokens tokens each
  val_000000.bin   the last ceil(val_fraction * documents) documents (at most all but one;
                   none with --val-fraction 0 or a single document)
  prepare.json     written last: tokenizer, vocab_size, dtype, eot_id, documents, tokens,
                   shards, bad_lines, inputs
Files are written as NAME.partial, synced and renamed at the end; shards an earlier run left
in OUT_DIR (train_NNNNNN.bin, val_NNNNNN.bin) that this run did not write are removed.

Exit status: 0 done, 1 bad data (a bad line with --on-bad-line fail, no documents),
2 usage or environment (a missing input, tokenizer or pyarrow, an unusable option).
"""
from __future__ import annotations

import argparse
import array
import collections
import glob
import json
import math
import multiprocessing
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1  # the header's count is an int32
UINT16_VOCAB = 65536
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
EXTENSIONS = (".jsonl", ".json", ".txt", ".parquet")
SHARD_NAME = re.compile(r"(train|val)_\d{6}\.bin")
MAX_PRINTED_BAD_LINES = 20
BATCH_BYTES = 1 << 20  # the text sent to a worker at a time
BATCH_ITEMS = 1024
PROGRESS_INTERVAL_S = 0.5

# Kinds of input items (what a worker gets): a JSON line, a whole text file, a str.
JSON_LINE, TEXT_FILE, STRING = 0, 1, 2


class TokenIdError(Exception):
    """A token id that does not fit the shards' dtype (raised in a worker)."""


class Failure(Exception):
    """Ends the run with an exit status and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ---- the llm.c format -------------------------------------------------------------------------

def llmc_layout(vocab_size: int) -> tuple[int, int, str]:
    """(magic, version, array typecode) for a vocabulary of vocab_size tokens."""
    if vocab_size <= UINT16_VOCAB:
        return 20240520, 1, "H"
    return 20240801, 7, "I"


def dtype_name(vocab_size: int) -> str:
    return "uint16" if llmc_layout(vocab_size)[2] == "H" else "uint32"


def llmc_header(count: int, vocab_size: int) -> bytes:
    magic, version, _ = llmc_layout(vocab_size)
    if not 0 <= count <= MAX_SHARD_TOKENS:
        raise ValueError(f"{count} tokens do not fit an llm.c header (at most {MAX_SHARD_TOKENS})")
    return struct.pack("<3i", magic, version, count) + bytes(HEADER_BYTES - 12)


def token_bytes(tokens, vocab_size: int) -> bytes:
    """tokens (ids) as little-endian uint16 or uint32 bytes; OverflowError if one does not fit."""
    packed = array.array(llmc_layout(vocab_size)[2], tokens)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(path: str, tokens, vocab_size: int) -> None:
    """Writes one llm.c shard of tokens (ids) at path atomically (path.partial, fsync, rename)."""
    data = token_bytes(tokens, vocab_size)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(llmc_header(len(data) // token_width(vocab_size), vocab_size))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def token_width(vocab_size: int) -> int:
    return 2 if llmc_layout(vocab_size)[2] == "H" else 4


class ShardStream:
    """One token stream written as PREFIX_000000.bin, ... of at most shard_tokens tokens each.

    The files stay NAME.partial (header unset) until finish(); truncate() can cut the stream's
    tail first, which is how the held-out documents leave the training stream.
    """

    def __init__(self, out_dir: str, prefix: str, shard_tokens: int, vocab_size: int):
        self.out_dir, self.prefix = out_dir, prefix
        self.shard_tokens, self.vocab_size = shard_tokens, vocab_size
        self.width = token_width(vocab_size)
        self.tokens = 0  # in the stream
        self.partials: list[str] = []  # one a shard, in order
        self._file = None

    def name(self, index: int) -> str:
        return f"{self.prefix}_{index:06d}.bin"

    def write(self, data: bytes) -> None:
        """Appends tokens (little-endian bytes), starting new shards as they fill."""
        view = memoryview(data)
        while view:
            room = len(self.partials) * self.shard_tokens - self.tokens
            if room == 0:
                self._open_next()
                room = self.shard_tokens
            chunk = view[: room * self.width]
            self._file.write(chunk)
            self.tokens += len(chunk) // self.width
            view = view[len(chunk):]

    def _open_next(self) -> None:
        self._close_current()
        path = os.path.join(self.out_dir, self.name(len(self.partials)) + ".partial")
        self.partials.append(path)
        self._file = open(path, "wb")
        self._file.write(bytes(HEADER_BYTES))

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_tail(self, start: int, chunk_tokens: int = 1 << 24):
        """Yields the stream's tokens from start to the end, as bytes in chunks."""
        self._close_current()
        position = start
        while position < self.tokens:
            index, offset = divmod(position, self.shard_tokens)
            count = min(chunk_tokens, self.shard_tokens - offset, self.tokens - position)
            with open(self.partials[index], "rb") as f:
                f.seek(HEADER_BYTES + offset * self.width)
                data = f.read(count * self.width)
            yield data
            position += count

    def truncate(self, tokens: int) -> None:
        """Keeps the stream's first tokens, removing whole shards past them."""
        self._close_current()
        keep = math.ceil(tokens / self.shard_tokens)
        for path in self.partials[keep:]:
            os.remove(path)
        self.partials = self.partials[:keep]
        if keep:
            last = tokens - (keep - 1) * self.shard_tokens
            os.truncate(self.partials[-1], HEADER_BYTES + last * self.width)
        self.tokens = tokens

    def finish(self) -> list[tuple[str, str]]:
        """Writes the headers and syncs; returns (partial path, final name) a shard."""
        self._close_current()
        shards = []
        for index, path in enumerate(self.partials):
            count = min(self.shard_tokens, self.tokens - index * self.shard_tokens)
            with open(path, "r+b") as f:
                f.write(llmc_header(count, self.vocab_size))
                f.flush()
                os.fsync(f.fileno())
            shards.append((path, self.name(index)))
        return shards

    def discard(self) -> None:
        self._close_current()
        for path in self.partials:
            if os.path.exists(path):
                os.remove(path)
        self.partials = []


# ---- inputs -----------------------------------------------------------------------------------

def expand_inputs(patterns: list[str]) -> list[str]:
    """The input files, in order: files as given, directories recursively (sorted), globs."""
    files: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        for path in expand_one(pattern):
            real = os.path.realpath(path)
            if real in seen:
                print(f"prepare_data: {path} is named more than once; it is read once",
                      file=sys.stderr)
                continue
            seen.add(real)
            files.append(path)
    return files


def expand_one(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        found = []
        for root, dirs, names in os.walk(pattern):
            dirs.sort()
            found += [os.path.join(root, n) for n in sorted(names) if n.endswith(EXTENSIONS)]
        return found
    if os.path.exists(pattern):
        if not pattern.endswith(EXTENSIONS):
            raise Failure(2, f"{pattern}: not an input type this tool reads "
                             f"({', '.join(EXTENSIONS)})")
        return [pattern]
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise Failure(2, f"{pattern}: no file matches")
        return [m for p in matches for m in (expand_one(p) if os.path.isdir(p) else [p])
                if m.endswith(EXTENSIONS)]
    raise Failure(2, f"{pattern}: no such file or directory")


def check_parquet_support(files: list[str]) -> None:
    parquet = [f for f in files if f.endswith(".parquet")]
    if not parquet:
        return
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise Failure(2, f"{parquet[0]}: reading .parquet needs pyarrow: pip install pyarrow")


@dataclass
class Item:
    """One input unit: where it is (file, line) and what a worker gets (kind, payload)."""
    file: str
    line: int
    kind: int
    payload: object


def read_items(files: list[str], text_key: str):
    """Yields the items of every file, in order. Empty JSON lines are skipped here."""
    for path in files:
        try:
            if path.endswith(".parquet"):
                yield from parquet_items(path, text_key)
            elif path.endswith(".txt"):
                with open(path, "rb") as f:
                    data = f.read()
                if data:  # an empty file has no document
                    yield Item(path, 1, TEXT_FILE, data)
            else:
                with open(path, "rb") as f:
                    for number, line in enumerate(f, 1):  # no line length limit
                        if line.strip():
                            yield Item(path, number, JSON_LINE, line)
        except OSError as e:
            raise Failure(2, f"{path}: cannot read: {e.strerror or e}")


def parquet_items(path: str, text_key: str):
    """Rows of a parquet file; line is the row's number (1-based)."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors have no common base besides Exception
        raise Failure(1, f"{path}: not a readable parquet file: {e}")
    if text_key not in reader.schema_arrow.names:
        raise Failure(1, f"{path}: no column {text_key!r} (columns: "
                         f"{', '.join(reader.schema_arrow.names)}); pass --text-key")
    row = 0
    for batch in reader.iter_batches(columns=[text_key]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield Item(path, row, STRING, value)


def batches(items, max_bytes: int = BATCH_BYTES, max_items: int = BATCH_ITEMS):
    """Groups items into lists of about max_bytes of text or max_items items."""
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item.payload) if isinstance(item.payload, (bytes, str)) else 0
        if size >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---- tokenizing (in the workers) --------------------------------------------------------------

_worker: dict = {}


def init_worker(tokenizer_path: str, text_key: str, eot_id: int, vocab_size: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    from tokenizers import Tokenizer

    _worker.update(tokenizer=Tokenizer.from_file(tokenizer_path), text_key=text_key,
                   eot_id=eot_id, vocab_size=vocab_size)


def document_text(kind: int, payload, text_key: str) -> str:
    """The document's text; ValueError(what is wrong) for a bad line."""
    if kind == STRING:
        if not isinstance(payload, str):
            raise ValueError(f"{text_key!r} is not a string (got {type(payload).__name__})")
        return payload
    try:
        text = payload.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 (byte 0x{payload[e.start]:02x} at byte {e.start + 1}"
                         f"{' of the file' if kind == TEXT_FILE else ' of the line'})")
    if kind == TEXT_FILE:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})")
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object (got {type(value).__name__})")
    if text_key not in value:
        raise ValueError(f"no key {text_key!r} (keys: {', '.join(list(value)[:8]) or 'none'});"
                         f" pass --text-key")
    text = value[text_key]
    if not isinstance(text, str):
        raise ValueError(f"{text_key!r} is not a string (got {type(text).__name__})")
    if b"\\ud" in payload or b"\\uD" in payload:  # JSON may escape a lone surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{text_key!r} holds an unpaired surrogate "
                             f"(U+{ord(text[e.start]):04X}), not valid Unicode")
    return text


def tokenize_batch(work: list[tuple[int, object]]):
    """(kind, payload) items -> (token bytes, [tokens per document], [(index, error)]).

    Each document's tokens are its end-of-text token then its text's tokens.
    """
    texts, errors = [], []
    for index, (kind, payload) in enumerate(work):
        try:
            texts.append(document_text(kind, payload, _worker["text_key"]))
        except ValueError as e:
            errors.append((index, str(e)))
    tokenizer, eot = _worker["tokenizer"], _worker["eot_id"]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    ids, lengths = [], []
    for encoding in encode(texts, add_special_tokens=False):
        ids.append(eot)
        ids += encoding.ids
        lengths.append(1 + len(encoding.ids))
    try:
        data = token_bytes(ids, _worker["vocab_size"])
    except OverflowError:
        raise TokenIdError(f"the tokenizer gave a token id ({max(ids)}) does not fit "
                           f"{dtype_name(_worker['vocab_size'])} (vocab {_worker['vocab_size']})")
    return data, lengths, errors


class Tokenizers:
    """Ordered tokenizing of batches, in this process (workers 1) or a pool."""

    def __init__(self, workers: int, init_args: tuple):
        self.pool = None
        self.window = 2 * workers + 2  # batches in flight: bounded memory, all workers busy
        if workers <= 1:
            init_worker(*init_args)
        else:
            self.pool = multiprocessing.Pool(workers, init_worker, init_args)

    def map(self, batch_iter):
        """Yields (batch, result) in the batches' order."""
        if self.pool is None:
            for batch in batch_iter:
                yield batch, tokenize_batch(work_of(batch))
            return
        pending = collections.deque()
        for batch in batch_iter:
            pending.append((batch, self.pool.apply_async(tokenize_batch, (work_of(batch),))))
            if len(pending) >= self.window:
                batch, result = pending.popleft()
                yield batch, result.get()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.get()

    def close(self, abort: bool = False) -> None:
        if self.pool is not None:
            if abort:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()


def work_of(batch: list[Item]) -> list[tuple[int, object]]:
    return [(item.kind, item.payload) for item in batch]


# ---- the run ----------------------------------------------------------------------------------

def val_documents(documents: int, fraction: Fraction) -> int:
    """How many of the last documents are held out: ceil(fraction * documents), at least one
    and at most all but one (none when fraction is 0 or there is a single document)."""
    if fraction == 0 or documents < 2:
        return 0
    ceil = -(-fraction.numerator * documents // fraction.denominator)  # exact, and fast
    return min(max(1, ceil), documents - 1)


class Progress:
    """A \\r line on stderr with documents/s and tokens/s, redrawn at most every 0.5 s."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = self.last = time.monotonic()
        self.shown = False

    def update(self, documents: int, tokens: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < PROGRESS_INTERVAL_S):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{documents:,} documents, {tokens:,} tokens "
                         f"({rate(documents, elapsed)} documents/s, "
                         f"{rate(tokens, elapsed)} tokens/s)   ")
        sys.stderr.flush()
        self.shown = True

    def end_line(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


def rate(count: int, seconds: float) -> str:
    per_second = count / seconds
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"


@dataclass
class Counts:
    documents: int = 0
    tokens: int = 0
    bad_lines: int = 0
    tail: collections.deque = field(default_factory=collections.deque)  # last docs' lengths
    tail_tokens: int = 0


def tokenize_inputs(args, files, vocab_size, eot_id, stream: ShardStream) -> Counts:
    """Tokenizes every document into stream; keeps the lengths of the documents that may be
    held out (the last val_documents(n) of the n so far: that tail only moves forward)."""
    counts = Counts()
    progress = Progress(args.progress or sys.stderr.isatty())
    pool = Tokenizers(args.workers, (args.tokenizer_file, args.text_key, eot_id, vocab_size))
    ok = False
    try:
        results = pool.map(batches(read_items(files, args.text_key)))
        for batch, (data, lengths, errors) in results:
            for index, what in errors:
                report_bad_line(args, counts, progress, batch[index], what)
            stream.write(data)
            for length in lengths:
                counts.documents += 1
                counts.tail.append(length)
                counts.tail_tokens += length
                while len(counts.tail) > val_documents(counts.documents, args.val_fraction):
                    counts.tail_tokens -= counts.tail.popleft()
            counts.tokens += sum(lengths)
            progress.update(counts.documents, counts.tokens)
        ok = True
    except TokenIdError as e:
        raise Failure(2, f"{args.tokenizer_file}: {e}")
    finally:
        pool.close(abort=not ok)
        progress.update(counts.documents, counts.tokens, force=True)
        progress.end_line()
    return counts


def report_bad_line(args, counts: Counts, progress: Progress, item: Item, what: str) -> None:
    where = f"{item.file}:row {item.line}" if item.kind == STRING else f"{item.file}:{item.line}"
    if args.on_bad_line == "fail":
        progress.end_line()
        raise Failure(1, f"{where}: {what} (--on-bad-line fail)")
    counts.bad_lines += 1
    if counts.bad_lines <= MAX_PRINTED_BAD_LINES:
        progress.end_line()
        print(f"{where}: {what}", file=sys.stderr)


def publish(out_dir: str, shards: list[tuple[str, str]], summary: dict) -> None:
    """Renames the shards into place, removes an earlier run's other shards, then writes
    prepare.json (its presence means the directory is complete)."""
    manifest = os.path.join(out_dir, "prepare.json")
    if os.path.exists(manifest):
        os.remove(manifest)
    names = set()
    for partial, name in shards:
        os.replace(partial, os.path.join(out_dir, name))
        names.add(name)
    stale = [n for n in os.listdir(out_dir) if SHARD_NAME.fullmatch(n) and n not in names]
    for name in sorted(stale):
        os.remove(os.path.join(out_dir, name))
    if stale:
        print(f"prepare_data: removed {len(stale)} shard(s) of an earlier run from {out_dir}",
              file=sys.stderr)
    with open(manifest + ".partial", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(manifest + ".partial", manifest)
    fsync_dir(out_dir)


def split_and_publish(args, files, vocab_size, eot_id, train: ShardStream, counts: Counts):
    """Moves the held-out tail of the stream into val shards and publishes everything."""
    val_docs = len(counts.tail)
    val = ShardStream(args.out, "val", args.shard_tokens, vocab_size)
    try:
        if val_docs:
            for data in train.read_tail(counts.tokens - counts.tail_tokens):
                val.write(data)
            train.truncate(counts.tokens - counts.tail_tokens)
        shards = train.finish() + val.finish()
        summary = {
            "tokenizer": args.tokenizer_file,
            "vocab_size": vocab_size,
            "dtype": dtype_name(vocab_size),
            "eot_id": eot_id,
            "documents": {"train": counts.documents - val_docs, "val": val_docs},
            "tokens": {"train": train.tokens, "val": val.tokens},
            "shards": [name for _, name in shards],
            "bad_lines": counts.bad_lines,
            "inputs": files,
        }
        publish(args.out, shards, summary)
    except BaseException:
        val.discard()
        raise
    return summary, len(train.partials)


def load_tokenizer(path: str):
    """(tokenizer, path of its tokenizer.json) or Failure(2)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise Failure(2, "the `tokenizers` package is missing: pip install tokenizers")
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise Failure(2, f"{file}: no such tokenizer file")
    try:
        return Tokenizer.from_file(file), os.path.abspath(file)
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
        raise Failure(2, f"{file}: not a tokenizers tokenizer.json: {e}")


def choose_eot(tokenizer, eot_arg, vocab_size: int, tokenizer_file: str) -> int:
    if eot_arg is not None:
        if not 0 <= eot_arg < vocab_size:
            raise Failure(2, f"--eot-id {eot_arg} is outside the vocabulary of {tokenizer_file} "
                             f"(0..{vocab_size - 1})")
        return eot_arg
    for token in EOT_CANDIDATES:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    raise Failure(2, f"{tokenizer_file} has none of {', '.join(EOT_CANDIDATES)}: "
                     f"pass --eot-id with the id that separates documents")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Tokenize JSONL/text/parquet corpora into llm.c token shards.",
        epilog="See the module docstring for the formats and exit codes.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, directories (recursive) or globs")
    parser.add_argument("--tokenizer", required=True,
                        help="a tokenizer.json or a directory that holds one")
    parser.add_argument("--out", required=True, help="the output directory")
    parser.add_argument("--text-key", default="text", help="the JSON key of the text")
    parser.add_argument("--val-fraction", default="0.005",
                        help="the fraction of documents held out (the last ones)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000,
                        help="the most tokens in a shard")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="tokenizing processes")
    parser.add_argument("--on-bad-line", choices=("skip", "fail"), default="skip")
    parser.add_argument("--eot-id", type=int, help="the token put before each document")
    parser.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal")
    args = parser.parse_args(argv)
    try:
        args.val_fraction = Fraction(args.val_fraction)
    except (ValueError, ZeroDivisionError):
        parser.error(f"--val-fraction {args.val_fraction!r} is not a number")
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction {float(args.val_fraction)} is not in [0, 1)")
    if not 1 <= args.shard_tokens <= MAX_SHARD_TOKENS:
        parser.error(f"--shard-tokens {args.shard_tokens} is not in 1..{MAX_SHARD_TOKENS} "
                     f"(the llm.c header counts tokens in an int32)")
    if args.workers < 1:
        parser.error(f"--workers {args.workers} is below 1")
    return args


def run(argv) -> int:
    args = parse_args(argv)  # exits 2 on a usage error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer, args.tokenizer_file = load_tokenizer(args.tokenizer)
    vocab_size = tokenizer.get_vocab_size()
    eot_id = choose_eot(tokenizer, args.eot_id, vocab_size, args.tokenizer_file)
    files = expand_inputs(args.inputs)
    if not files:
        raise Failure(2, f"no {', '.join(EXTENSIONS)} file in {' '.join(args.inputs)}")
    check_parquet_support(files)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise Failure(2, f"{args.out}: cannot create the output directory: {e.strerror or e}")

    train = ShardStream(args.out, "train", args.shard_tokens, vocab_size)
    try:
        counts = tokenize_inputs(args, files, vocab_size, eot_id, train)
        if counts.documents == 0:
            raise Failure(1, f"no documents in {len(files)} input file(s) "
                             f"({counts.bad_lines} bad lines): nothing written")
        summary, train_shards = split_and_publish(args, files, vocab_size, eot_id, train, counts)
    except BaseException:
        train.discard()
        raise
    if counts.bad_lines > MAX_PRINTED_BAD_LINES:
        print(f"... and {counts.bad_lines - MAX_PRINTED_BAD_LINES} more bad lines",
              file=sys.stderr)
    print(f"{counts.documents} documents ({counts.bad_lines} bad lines skipped), "
          f"{summary['tokens']['train']} train tokens in {train_shards} shards, "
          f"{summary['tokens']['val']} val tokens")
    return 0


def main(argv=None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except Failure as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        where = e.filename or "output"
        print(f"prepare_data: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare_data: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
