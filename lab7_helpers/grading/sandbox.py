"""The bubblewrap command line that runs one submission's code (``lab7 grade``; Linux only).

Inside, the code sees: the Python installation and this package, read-only; four small private in-memory folders
it may write (``/content``, where it runs, its home ``/root``, ``/tmp`` and ``/dev/shm``, each ``WORK_FOLDER_MB``:
tmpfs pages count against no process limit, so each is sized, and everything else, ``/`` and ``/dev`` included,
is read-only); its own ``/proc``. Nothing else of the machine's files: not the submissions folder, the grader's
output, the instructor's checkout or ``/etc``. It has its own network (no interfaces but an unconnected
loopback), PID, IPC and UTS namespaces, no capabilities, a scrubbed environment that looks like Colab's (home
``/root``, a random host name: code cannot tell the grader by its name), and it dies with the grader. A seccomp
filter refuses every new process (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``) while threads still work:
``RLIMIT_NPROC`` cannot do that, because the kernel does not apply it to root and counts every process of an
ordinary user.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import site
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import lab7_helpers

WORK_FOLDER, HOME = "/content", "/root"  # where the code runs, and its home: as in Colab
PACKAGE_ROOT = "/opt/lab7"  # lab7_helpers is mounted here, alone: not the checkout that holds the solutions
WORK_FOLDER_MB = 64
INSTALL_HINT = ("lab7 grade runs each notebook in a bubblewrap sandbox, but `bwrap` is not installed: install it "
                "(`sudo apt install bubblewrap`; on macOS, run the grader in a Linux container), or pass "
                "--no-sandbox for a class you trust.")

# seccomp: classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}.
_LOAD, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000, 0x80000000
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x00010000
_SYSCALLS = {  # machine -> (audit arch, {fork, vfork}, clone, clone3); aarch64 has no fork or vfork
    "x86_64": (0xC000003E, (57, 58), 56, 435),
    "aarch64": (0xC00000B7, (), 220, 435),
}


def no_new_processes_filter(machine: str | None = None) -> bytes | None:
    """A seccomp program that refuses new processes but allows threads, or None on an unknown CPU."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return None
    arch, forks, clone, clone3 = _SYSCALLS[machine]
    # (code, jump if true, jump if false, k); a jump names the label it goes to, 0 means the next instruction.
    program = [(_LOAD, 0, 0, 4), (_JEQ, 0, "kill", arch), (_LOAD, 0, 0, 0),
               (_JGE, "deny", 0, 0x40000000),  # x32 system calls
               *[(_JEQ, "deny", 0, nr) for nr in forks],
               # clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes glibc use clone.
               (_JEQ, "nosys", 0, clone3), (_JEQ, 0, "allow", clone),
               (_LOAD, 0, 0, 16), (_JSET, "allow", "deny", _CLONE_THREAD),  # the low 32 bits of clone's flags
               ("kill", _RET, 0, 0, _KILL), ("nosys", _RET, 0, 0, _ERRNO | _ENOSYS),
               ("deny", _RET, 0, 0, _ERRNO | _EPERM), ("allow", _RET, 0, 0, _ALLOW)]
    labels = {ins[0]: i for i, ins in enumerate(program) if isinstance(ins[0], str)}
    program = [ins[1:] if isinstance(ins[0], str) else ins for ins in program]
    offset = lambda target, i: labels[target] - i - 1 if isinstance(target, str) else target  # noqa: E731
    return b"".join(struct.pack("=HBBI", code, offset(jt, i), offset(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(program))


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _read_only_mounts() -> list[str]:
    """The system's programs and libraries, the Python installation, the package; nothing else."""
    args: list[str] = []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", name)
        if path.is_symlink():  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime"):  # the loader's list, the time zone
        if Path("/etc", name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    roots = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages())}
    for root in sorted(roots):
        if root.is_dir() and not any(root.is_relative_to(f"/{n}") for n in ("usr", "bin", "lib", "lib64")):
            args += ["--ro-bind", str(root), str(root)]
    package = Path(lab7_helpers.__file__).resolve().parent
    return args + ["--ro-bind", str(package), f"{PACKAGE_ROOT}/lab7_helpers"]


def environment() -> dict[str, str]:
    """All the sandboxed code (and bwrap itself, whose environment /proc/1/environ shows) gets to see."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": HOME, "PYTHONPATH": PACKAGE_ROOT,
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


def command(python_args: list[str], seccomp_fd: int | None) -> list[str]:
    """``bwrap ... python <python_args>`` with the mounts and namespaces of the module docstring."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise ValueError(INSTALL_HINT)
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    for key, value in environment().items():
        args += ["--setenv", key, value]
    # the private folders first: a Python installation or checkout under /tmp is then mounted on top of them
    args += ["--proc", "/proc", "--dev", "/dev"]
    for folder in ("/tmp", "/dev/shm", HOME, WORK_FOLDER):
        args += ["--size", str(WORK_FOLDER_MB * 2**20), "--tmpfs", folder]
    args += _read_only_mounts() + ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORK_FOLDER,
                                   "--hostname", secrets.token_hex(6)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--", sys.executable, "-s", *python_args]


def seccomp_file():
    """An open file holding the seccomp program (bwrap reads it from an inherited descriptor), or None."""
    program = no_new_processes_filter()
    if program is None:
        return None
    handle = tempfile.TemporaryFile()
    handle.write(program)
    handle.seek(0)
    return handle


def check_available() -> None:
    """Raise ValueError with one sentence when bwrap is missing (from ``command``) or cannot create its sandbox
    here."""
    result = subprocess.run(command(["-c", "pass"], None), env=environment(), capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise ValueError(f"bubblewrap is installed but cannot create a sandbox here ({last}); in a container, "
                         "allow user namespaces (or run the grader on the host), or pass --no-sandbox for a class "
                         "you trust.")
