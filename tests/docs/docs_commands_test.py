#!/usr/bin/env python3
"""Every dsrun and dsckpt command line in the docs still parses.

Usage: docs_commands_test.py SOURCE_DIR BUILD_DIR

Running the documented commands for real would train for minutes or need a GPU, so each one is
run with DSTRAIN_CHECK_ARGS=1: the program parses its command line as usual (its subcommand,
every flag and the values shown must be accepted) and exits without doing anything.

Where commands are found (README.md, docs/*.md, examples/*.md):
  - fenced code blocks: every line whose command is dsrun or dsckpt, plain or by a path
    (build/dsrun, ./build-split/dsckpt, $(which dsrun)), after a `$ ` prompt, environment
    assignments (NCCL_DEBUG=INFO), a crontab schedule, or a launcher (srun, torchrun) and its
    own arguments; lines continued with a trailing backslash are joined.
  - inline code spans in prose (which may wrap across lines), when they show a command rather
    than name one: a span whose words after the program are all plain lowercase words
    (`dsckpt bench io`, `dsrun bench`) names a command and is not checked.
Each line is then cut at a trailing comment (` # ...`), a pipe, a redirection, `&&` or `;`.
Synopsis notation is expanded: `[--json]` -> `--json`, `[a|b]` -> `a`, a repeat marker
`[--set k=v ...]` -> `--set k=v`, `<path>` -> `path`. Parsing opens no file, so names such as
cfg.json or ckpts/ stand as they are; a placeholder word, all capitals (N, DIR, SAVE_DIR, HOST0)
or a single letter (i), becomes 1, which every option takes (a count, a name, a path).

SKIP, with the reason: a line that still holds `...` (it cannot be made parseable), and a
directory a flag checks on disk that this machine lacks (CLI11's ExistingDirectory, as in
`--dir /scratch`): CLI11 stops there, so the rest of that line is unchecked.

Prints one row per command; exits 1 if any FAILs, 77 (skipped) without the binaries, else 0.
"""
import os
import re
import shlex
import subprocess
import sys

PROGRAMS = ("dsrun", "dsckpt")
BINARY = re.compile(r"(?:\./)?(?:[\w.-]+/)*(dsrun|dsckpt)")  # dsrun, ./build-x/dsckpt
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=\S*")
CRON_SCHEDULE = re.compile(r"([\d*/,-]+\s+){5}")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|[a-z]")  # N, SAVE_DIR, HOST0, i
LAUNCHERS = ("srun", "torchrun", "mpirun")
SHELL_CUT = re.compile(r"\s#.*|\s\d*[<>].*|\|.*|&&.*|;.*")  # comment, redirection, pipe, list
MIN_COMMANDS = 20
TIMEOUT_S = 20


def doc_files(source_dir):
    files = [os.path.join(source_dir, "README.md")]
    for sub in ("docs", "examples"):
        folder = os.path.join(source_dir, sub)
        if os.path.isdir(folder):
            names = sorted(n for n in os.listdir(folder) if n.endswith(".md"))
            files += [os.path.join(folder, n) for n in names]
    return [f for f in files if os.path.isfile(f)]


def fenced_lines(text):
    """(line number, logical line) of each line inside a fenced block; blanks the blocks in a
    copy of the text, so that code spans are looked for in prose only."""
    out, prose, inside, pending = [], [], False, None
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, None
            prose.append("")
            continue
        prose.append("" if inside else line)
        if not inside:
            continue
        first, joined = pending or (number, "")
        joined += line.strip()
        if joined.endswith("\\"):
            pending = (first, joined[:-1] + " ")
        else:
            pending = None
            out.append((first, joined))
    return out, "\n".join(prose)


def code_spans(prose):
    """(line number, text) of each inline code span, one line even when it wraps."""
    for m in re.finditer(r"`([^`]+)`", prose):
        yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())


def expand_synopsis(line):
    """[--json] -> --json, [a|b] -> a, [--set k=v ...] -> --set k=v, <path> -> path."""
    def optional(m):
        first = m.group(2).split("|")[0].strip()
        return m.group(1) + re.sub(r"\s*\.\.\.$", "", first)
    line = re.sub(r"(^|\s)\[([^\[\]]*)\]", optional, line)
    return re.sub(r"<([\w.-]+)>", r"\1", line)


class Skip(Exception):
    pass


def to_command(line):
    """[program, args...] of the dsrun or dsckpt command on a line, None when it has none.
    Raises Skip with the reason when it has one that cannot be made parseable."""
    line = re.sub(r"^\$\s+", "", line.strip())
    line = re.sub(r"\$\(which (\w+)\)", r"\1", line)
    schedule = CRON_SCHEDULE.match(line)
    if schedule:
        line = line[schedule.end():]
    line = SHELL_CUT.sub("", expand_synopsis(line), count=1)
    try:
        words = shlex.split(line)
    except ValueError as e:
        words = line.split()
        if not any(BINARY.fullmatch(w) for w in words):
            return None
        raise Skip(f"shlex: {e}")
    while words and ENV_ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    if words and words[0] in LAUNCHERS:
        words = words[next((i for i, w in enumerate(words) if BINARY.fullmatch(w)), len(words)):]
    if not words or not BINARY.fullmatch(words[0]):
        return None
    command = [BINARY.fullmatch(words[0]).group(1)] + words[1:]
    command = ["1" if PLACEHOLDER.fullmatch(w) else w for w in command]
    if any("..." in w or "\u2026" in w for w in command):
        raise Skip("literal '...'")
    return command


def find_commands(source_dir):
    """(where, text, command or None, skip reason or None) of each command in the docs."""
    found = []
    for path in doc_files(source_dir):
        with open(path, encoding="utf-8") as f:
            lines, prose = fenced_lines(f.read())
        name = os.path.relpath(path, source_dir)
        spans = [(n, t, True) for n, t in code_spans(prose)]
        for number, text, inline in sorted([(n, t, False) for n, t in lines] + spans):
            if inline and all(re.fullmatch(r"[a-z]+", w) for w in text.split()[1:]):
                continue  # a span naming a command: `dsckpt bench io`
            try:
                command = to_command(text)
            except Skip as reason:
                found.append((f"{name}:{number}", text, None, str(reason)))
                continue
            if command is not None:
                found.append((f"{name}:{number}", text, command, None))
    return found


def run(build_dir, command):
    """(returncode, stderr) of command, parsed only."""
    env = dict(os.environ, DSTRAIN_CHECK_ARGS="1")
    binary = os.path.join(build_dir, command[0])
    try:
        p = subprocess.run([binary] + command[1:], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s: does {command[0]} honour DSTRAIN_CHECK_ARGS?"
    return p.returncode, p.stderr.strip()


def self_test(build_dir):
    """The hook must reject what does not parse, or every row below proves nothing."""
    for bad in (["dsrun", "--no-such-flag"], ["dsckpt", "frobnicate"]):
        rc, err = run(build_dir, bad)
        if rc == 0:
            sys.exit(f"self-test: '{' '.join(bad)}' parsed with DSTRAIN_CHECK_ARGS=1 "
                     f"(the hook accepts anything?)")
        print(f"self-test  FAIL as it must   {' '.join(bad)}  ({err.splitlines()[0]})")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    source_dir, build_dir = sys.argv[1:]
    missing = [p for p in PROGRAMS if not os.access(os.path.join(build_dir, p), os.X_OK)]
    if missing:
        print(f"skipped: no {', '.join(missing)} in {build_dir} (build it first)")
        return 77
    self_test(build_dir)
    counts = {"OK": 0, "FAIL": 0, "SKIP": 0}
    for where, text, command, reason in find_commands(source_dir):
        if command is not None:
            rc, err = run(build_dir, command)
            absent = re.search(r"(Directory|File|Path) does not exist: \S+", err)
            if rc != 0 and absent:
                reason = f"{absent.group(0)} on this machine (a flag checks it on disk)"
        status = "SKIP" if reason else "OK" if rc == 0 else "FAIL"
        counts[status] += 1
        print(f"{where:28} {status:4} {text}")
        if reason:
            print(f"{'':33}{reason}")
        elif status == "FAIL":
            print(f"{'':33}ran: {shlex.join(command)}")
            print("\n".join(f"{'':33}| {l}" for l in err.splitlines()))
    total = sum(counts.values())
    print(f"{total} commands: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if total < MIN_COMMANDS:
        print(f"found only {total} commands (expected at least {MIN_COMMANDS}): extractor broken?")
        return 1
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
