"""Atomic directories, checksums and small JSON files shared by every stage."""

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_size), b""):
      digest.update(chunk)
  return digest.hexdigest()


def link_or_copy(src: str, dst: str) -> None:
  """A hard link (instant, no extra space) where the file system allows, else a copy."""
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def write_json(path: str, payload: Any) -> None:
  """Writes JSON atomically (temporary file in the same directory, then rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  os.chmod(tmp, 0o644)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _json_default(value: Any) -> Any:
  if hasattr(value, "item"):  # numpy scalars
    return value.item()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str) -> Dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def file_checksums(directory: str, exclude=("manifest.json",)) -> Dict[str, Dict[str, Any]]:
  """sha256 and size of every file below `directory`, keyed by relative path."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in sorted(names):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel in exclude:
        continue
      out[rel] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
  return dict(sorted(out.items()))


def verify_listed_files(directory: str, listed: Dict[str, Dict[str, Any]], verify_checksums: bool,
                        error: type) -> None:
  """Checks the files a manifest lists (`file_checksums` output) against the disk.

  Raises `error` naming the first file that is missing, of another size (always
  checked), or, with `verify_checksums`, of another sha256.
  """
  for rel, expected in listed.items():
    full = os.path.join(directory, rel)
    if not os.path.exists(full):
      raise error(f"{full}: listed in the manifest but missing")
    if os.path.getsize(full) != expected["bytes"]:
      raise error(f"{full}: size {os.path.getsize(full)} != {expected['bytes']} in the manifest "
                  "(truncated or modified)")
    if verify_checksums and sha256_file(full) != expected["sha256"]:
      raise error(f"{full}: sha256 does not match the manifest (corrupt, or modified after it "
                  "was written)")


_OWNER_RE = re.compile(r"\.(?:tmp|old)-(\d+)-")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def stale_temporaries(final_path: str) -> List[str]:
  """Temporary siblings of `final_path` left by a killed `atomic_directory`, oldest first.

  Names carry the writing process's id (`.<name>.tmp-<pid>-<random>`); one whose
  process is gone, or without an id (written by an older version), is stale.
  """
  final_path = os.path.abspath(final_path)
  pattern = os.path.join(os.path.dirname(final_path), f".{glob.escape(os.path.basename(final_path))}")
  out = []
  for path in glob.glob(pattern + ".tmp-*") + glob.glob(pattern + ".old-*"):
    owner = _OWNER_RE.search(os.path.basename(path)[len(os.path.basename(final_path)) + 1:])
    if os.path.isdir(path) and not (owner and _alive(int(owner.group(1)))):
      out.append(path)
  return sorted(out, key=os.path.getmtime)


def remove_stale_temporaries(final_path: str,
                             log: Callable[[str], None] = logging.getLogger(__name__).warning
                             ) -> None:
  """Deletes `stale_temporaries(final_path)`, one log line each.

  A kill between the two renames of an overwrite leaves `final_path` absent and
  the previous version in an `.old-*` directory: that version is put back.
  """
  final_path = os.path.abspath(final_path)
  for path in stale_temporaries(final_path):
    previous = os.path.join(path, "previous")
    if ".old-" in os.path.basename(path) and os.path.isdir(previous) and \
        not os.path.exists(final_path):
      os.replace(previous, final_path)
      log(f"restored {final_path} from {path}: an overwrite was interrupted")
    shutil.rmtree(path, ignore_errors=True)
    log(f"removed {path}: a temporary directory left by an interrupted write")


@contextlib.contextmanager
def atomic_directory(final_path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary sibling directory that becomes `final_path` on success.

  A crash or exception inside the block removes the temporary directory, so
  `final_path` is either absent, the previous complete version, or the new
  complete version: never half written. With `overwrite`, an existing
  `final_path` is replaced by rename-aside-then-rename (the old version is
  deleted only after the new one is in place). A kill -9 cannot run the clean-up:
  the next call removes such leftovers (`remove_stale_temporaries`), so callers
  that keep state in one must recover it first (see model/training_run.py).
  """
  final_path = os.path.abspath(final_path)
  parent = os.path.dirname(final_path)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(final_path) and not overwrite:
    raise FileExistsError(f"{final_path} already exists (pass --overwrite to replace it)")
  remove_stale_temporaries(final_path)
  base = f".{os.path.basename(final_path)}"
  tmp = tempfile.mkdtemp(dir=parent, prefix=f"{base}.tmp-{os.getpid()}-")
  os.chmod(tmp, 0o755)
  try:
    yield tmp
    if os.path.exists(final_path):
      old = tempfile.mkdtemp(dir=parent, prefix=f"{base}.old-{os.getpid()}-")
      os.replace(final_path, os.path.join(old, "previous"))
      os.replace(tmp, final_path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, final_path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
