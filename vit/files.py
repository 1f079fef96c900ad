"""Files written atomically: a temporary file beside the target, then one rename, so a crash or Ctrl-C mid-write
leaves the previous file whole. Every file train.py and predict.py write goes through here (kept apart from
vit.checkpoint so that saving a figure does not import torchvision)."""
import os
import tempfile
from pathlib import Path

UMASK = os.umask(0o022)  # read once, in the main thread (os.umask can only read by setting)
os.umask(UMASK)


def replace_atomically(path, write):
    """write(tmp) fills a temporary file in path's folder, which then replaces path in one rename: a crash
    or an error leaves the old file (and no temporary one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # the permissions of a plainly created file, not mkstemp's owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    """A text file (JSON, CSV), written atomically, its line endings as given."""
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, newline=""))
