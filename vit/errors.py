"""One exception type for mistakes a user can fix (bad path, bad image, wrong checkpoint), and the checks of
command-line flags: numbers in range, names that are not paths.

Scripts catch UserError and print its message as one line, never a traceback.
"""
import argparse
import math
import sys
from pathlib import Path


class UserError(Exception):
    """A problem in the user's input, with a message that names the file and what to do."""


def printable_output():
    """Let the scripts print any path or class name: a character the output's encoding lacks (a Windows code page
    where output is redirected to a file) is written as an escape instead of stopping them with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # not on every replacement of sys.stdout (a test's capture, say)
            stream.reconfigure(errors="backslashreplace")


def interrupt_quietly():
    """Make a Ctrl-C that no main() catches (the seconds while a script imports torch or matplotlib, before its
    main runs) one line, 'interrupted', instead of a traceback; Python then ends as interrupted (status 130). Called
    by the scripts before those imports; a library user's own Ctrl-C is left alone."""
    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print("\ninterrupted", file=sys.stderr)
        else:
            sys.__excepthook__(kind, value, traceback)
    sys.excepthook = hook


def exit_status(run, args):
    """What a script's main() returns: run(args)'s exit status, or 2 after a UserError, said as one line 'error: ...',
    or 130 after Ctrl-C, said as 'interrupted' (the files already written stay whole: each is written atomically)."""
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def bounded(kind, low, high=math.inf, below=False):
    """An argparse type: a `kind` (int or float) from low to high (strictly below high with below=True), so that a
    flag out of range is argparse's one error line, not a traceback deep in training. Infinity is refused too (a
    learning rate or weight decay of inf trains to NaN, a warm-up of inf epochs fails)."""
    def parse(text):
        value = kind(text)  # not a number: argparse's own "invalid int value" line
        if math.isinf(value) and high == math.inf:
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if not low <= value <= high or below and value == high:  # NaN too
            top = f" and {'below' if below else 'at most'} {high}" if high < math.inf else ""
            raise argparse.ArgumentTypeError(f"must be at least {low}{top}, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def nonempty(text):
    """An argparse type: a path, not the empty string (a quoted shell variable that is unset), which Path reads as
    the current folder: --out-dir "$OUT" would write there, --data "$DATA" look for train/ there."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (a shell variable that is not set?)")
    return text


def file_name(text):
    """An argparse type: a name for files (train.py's --name: OUT/models/NAME.pt), not a path that would lead out of
    the folder it is meant for."""
    if text in ("", ".", "..") or Path(text).name != text or "\\" in text:
        raise argparse.ArgumentTypeError(f"must be a plain name, not {text!r} (--out-dir says where runs go)")
    return text
