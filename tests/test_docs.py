"""The README and docs/: a README short enough to read in five minutes, no change told by its date, commands whose
flags their scripts know, and links that lead somewhere."""
import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
SOURCES = [*PAGES, REPO / "train.py", REPO / "predict.py", *sorted((REPO / "vit").glob("*.py")),
           *sorted((REPO / "bench").glob("*.py"))]
HISTORY = re.compile(r"before 20[0-9]{2}-[0-9]{2}|later (2-core )?machine", re.IGNORECASE)
SCRIPTS = {"train.py": "train", "predict.py": "predict", "vit.compare": "vit.compare", "vit.inspect": "vit.inspect"}
CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"


def history(text):
    """Lines that date a change or tell machines apart by 'the later machine'."""
    return [line.strip() for line in text.splitlines() if HISTORY.search(line)]


def test_history_finds_what_it_should():
    assert history("before 2026-11-28 it did X\nfine\non the later 2-core machine\nthe later machine") == [
        "before 2026-11-28 it did X", "on the later 2-core machine", "the later machine"]
    assert history("measured on 2026-11-27 on the 2-core AMD EPYC machine") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_change_is_told_by_its_date(path):
    found = history(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name}: say what the code does, name the machine (git log keeps the history): {found}"


def commands(text):
    """(script, argv) for every train.py, predict.py, vit.compare, vit.inspect and torchrun command in the text's
    code blocks (continued lines joined) and inline code spans."""
    blocks = [block.replace("\\\n", " ") for block in CODE_BLOCK.findall(text)]
    lines = [line for block in blocks for line in block.splitlines()]
    lines += re.findall(r"`((?:python|torchrun) [^`]+)`", CODE_BLOCK.sub("", text))
    found = []
    for line in lines:
        lexer = shlex.shlex(line.strip(), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (an unbalanced quote in prose or Python)
            continue
        ends = [i for i, t in enumerate(tokens) if set(t) <= set(";&|<>()")]
        tokens = tokens[:ends[0]] if ends else tokens  # the command before a pipe, redirection or `&&`
        if tokens[:2] == ["python", "-m"] and len(tokens) > 2 and tokens[2] in SCRIPTS:
            found.append((tokens[2], tokens[3:]))
        elif tokens[:1] == ["python"] and len(tokens) > 1 and tokens[1] in SCRIPTS:
            found.append((tokens[1], tokens[2:]))
        elif tokens[:1] == ["torchrun"] and "train.py" in tokens:
            found.append(("train.py", tokens[tokens.index("train.py") + 1:]))
    return found


def test_commands_finds_every_form():
    text = ("```bash\npython train.py --data x \\\n    --epochs 2   # a comment with --no-such-flag\n"
            "torchrun --nproc_per_node=2 train.py --seed 1 | tee log\npython -m vit.compare a b --out c.png\n```\n"
            "Inline: `python predict.py --model m.pt x.jpg` and `python -c 'print(1)'`.\n")
    assert commands(text) == [("train.py", ["--data", "x", "--epochs", "2"]), ("train.py", ["--seed", "1"]),
                              ("vit.compare", ["a", "b", "--out", "c.png"]),
                              ("predict.py", ["--model", "m.pt", "x.jpg"])]


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def known_flags(script):
    """Every option string the script's parser knows (hidden aliases too), read from the parser itself: its
    parse_args is stopped before it parses."""
    module = importlib.import_module(SCRIPTS[script])
    entry = getattr(module, "parse_args", None) or module.main

    def stop(parser, *args, **kwargs):
        raise Parsed(parser)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", stop)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
        with pytest.raises(Parsed) as parsed:
            entry([])
    return set(parsed.value.parser._option_string_actions)


def unknown_flags(found, flags_of):
    """'page: command' for each flag of a command that its script does not know (an exact name: no abbreviations)."""
    bad = []
    for page, (script, argv) in found:
        for token in argv:
            flag = token.strip("[](),").split("=")[0]
            if re.match(r"--?[A-Za-z]", flag) and flag not in flags_of(script):
                bad.append(f"{page}: {flag} in {script} {' '.join(argv)}")
    return bad


def test_unknown_flags_are_found():
    flags = {"train.py": {"--data", "--epochs"}}.get
    found = [("README.md", ("train.py", ["--data", "x", "--epoch", "3", "[--data]"]))]
    assert unknown_flags(found, flags) == ["README.md: --epoch in train.py --data x --epoch 3 [--data]"]


def test_every_command_uses_flags_its_script_knows():
    found = [(page.name, command) for page in PAGES for command in commands(page.read_text(encoding="utf-8"))]
    scripts = {script for _, (script, _) in found}
    assert {"train.py", "predict.py", "vit.compare", "vit.inspect"} <= scripts, scripts  # the commands were found
    flags = {script: known_flags(script) for script in {script for _, (script, _) in found}}
    assert "--img_path" in flags["predict.py"] and "--resume" in flags["train.py"]  # the parsers were read
    assert unknown_flags(found, flags.get) == []


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def broken_links(page):
    """Relative links and images of a page whose file, or whose #anchor in a markdown file, does not exist."""
    bad = []
    for target in LINK.findall(CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            bad.append(f"{page.name}: {target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(f"{page.name}: {target} (no such heading)")
    return bad


def test_broken_links_are_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n## Two words: here\n```\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[a](a.md) [b](a.md#two-words-here) ![c](c.png) [d](a.md#nope) [e](https://x.org) [f](#top)\n"
                    "# Top\n")
    assert broken_links(page) == ["b.md: c.png (no such file)", "b.md: a.md#nope (no such heading)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page) == []
