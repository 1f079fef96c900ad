"""Files written atomically: a temporary file beside the target, then one rename, so a crash or Ctrl-C mid-write
leaves the previous file whole. Every file train.py and predict.py write goes through here, torch.save's too (torch is
imported only for those, so that saving a figure does not load it)."""
import os
import tempfile
from pathlib import Path

from vit.errors import UserError

UMASK = os.umask(0o022)  # read once, in the main thread (os.umask can only read by setting)
os.umask(UMASK)


def _why(error, folder):
    """What stopped a write to folder, in words: a file standing where a folder should be, else the OS's reason."""
    existing = next(p for p in (Path(folder), *Path(folder).absolute().parents) if p.exists())
    return f"{existing} is a file, not a folder" if not existing.is_dir() else error.strerror or str(error)


def replace_atomically(path, write):
    """write(tmp) fills a temporary file in path's folder, which then replaces path in one rename: a crash
    or an error leaves the old file (and no temporary one). A file-system error becomes a UserError."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # the permissions of a plainly created file, not mkstemp's owner-only
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e.__context__, KeyboardInterrupt):  # a writer failing as Ctrl-C unwinds it (torch.save does)
            raise e.__context__ from None
        if isinstance(e, OSError):  # no room, no permission, a file where a folder should be
            raise UserError(f"{path}: cannot write ({_why(e, path.parent)}); "
                            "check that its folder is writable and the disk has room") from None
        raise


def make_folders(*folders):
    """Create the folders a run will write to now, so that an unusable path stops it before it starts."""
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{folder}: cannot create this folder ({_why(e, folder)}); "
                            "choose another place to write (--out-dir)") from None


def write_text(path, text):
    """A text file (JSON, CSV), written atomically, its line endings as given."""
    # UTF-8; file names that are not (os.fsdecode's surrogates) keep their own bytes
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, "utf-8", "surrogateescape", newline=""))


def save_atomically(obj, path):
    """torch.save, written atomically (replace_atomically). Through a Python file object: given a file name,
    torch.save holds the GIL for 0.2-0.3 s as it opens and again as it closes the file, which stalls the training
    loop while CheckpointWriter's thread writes (bench/checkpoint.py), and reports a full disk as a RuntimeError
    that names no cause; a file object's OSError becomes replace_atomically's one-line message."""
    import torch  # here: vit.compare writes its files without loading torch

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    replace_atomically(path, write)
