"""Container start-up for the local pod runner.

Runs inside a private mount namespace (``unshare --mount --propagation private``): bind-mounts the
pod's volumes at their mount paths (read-only ones really read-only), changes to the working
directory and execs the container command. Nothing here outlives the exec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount(src_fd: int, is_dir: bool, dst: str, read_only: bool) -> None:
    d = Path(dst)
    if is_dir:
        d.mkdir(parents=True, exist_ok=True)
    else:
        d.parent.mkdir(parents=True, exist_ok=True)
        if not d.exists():
            d.touch()
    # the source by file descriptor: an earlier mount (say an emptyDir at /tmp) may hide its path
    # --no-canonicalize: mount(8) would otherwise turn the fd back into a path, which may be hidden now
    subprocess.run(
        ["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{src_fd}", dst],
        check=True,
        pass_fds=(src_fd,),
    )
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", dst], check=True)


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    # open every source before mounting anything
    mounts = [(os.open(m["source"], os.O_PATH), Path(m["source"]).is_dir(), m) for m in spec["mounts"]]
    # the "image": the interpreter, the venv and the project's code, as the runner sees them
    image = [(os.open(p, os.O_PATH), p) for p in spec.get("imagePaths", []) if os.path.isdir(p)]
    # parents before children, so a mount inside another mount's path lands on top of it
    for fd, is_dir, m in sorted(mounts, key=lambda t: t[2]["mountPath"].count("/")):
        _mount(fd, is_dir, m["mountPath"], m["readOnly"])
        os.close(fd)
    # a volume mounted over a folder of the image (an emptyDir at /tmp while the checkout lives in
    # /tmp) must not hide it: in a real container the image is a filesystem of its own
    for fd, path in image:
        if any(Path(path).is_relative_to(m["mountPath"]) for m in spec["mounts"]):
            _mount(fd, True, path, True)
        os.close(fd)
    os.chdir(spec["workingDir"])
    argv_ = spec["argv"]
    try:
        os.execvpe(argv_[0], argv_, spec["env"])
    except OSError as e:
        # the kubelet reports this as StartError with exit code 128
        print(f"exec {argv_[0]!r}: {e}", file=sys.stderr)
        sys.exit(128)


if __name__ == "__main__":
    main(sys.argv)
