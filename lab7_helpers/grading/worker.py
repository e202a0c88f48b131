"""Runs one submission's TODO code inside the sandbox (started by ``lab7 grade``, never by hand). It only computes.

The grader talks to it in JSON lines, one request on stdin, one reply on stdout. It says ``{"ready": true}`` once
its imports are done (so that the TODO cells' time limit does not include importing torch), then:
1. ``{"todos": {todo_id: code}, "todo_timeout": seconds, "train_pairs": [...]}``: run each TODO cell in the
   notebook's namespace, with the grader's pairs as ``train_pairs``; reply
   ``{"todos": {todo_id: null or "the TODO cell raised ..."}}``.
2. ``{"get": name}``: reply ``{"value": <encoded value of that name>}``; a function is encoded as a handle, a number
   (so a lambda, a ``functools.partial`` or an alias is called as the object it is, whatever its ``__name__``);
   ``{"call": handle, "args": [<encoded>, ...]}``: call that function on the grader's inputs; reply
   ``{"value": <encoded result>}``, where each tensor that needs a gradient also carries ``"grads"``: the gradient
   of its sum with respect to each argument that needs one. Errors reply ``{"error": [type name, message]}``.
Values are plain JSON (see ``encode``), never pickle: the grader decodes data, compares it with its own expected
values and awards the points itself. Whatever this process prints, patches or forges is only data the grader may
reject; it cannot change how points are awarded.

The real boundary is the bubblewrap sandbox around this process (``sandbox.py``). The Python audit hook below is a
second layer (and all there is with ``--no-sandbox``): it refuses processes, sockets, ctypes, writing outside the
work folder and reading outside the Python installation and this package.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

import lab7_helpers as lab
from lab7_helpers import checks

MAX_ITEMS = 100_000  # numbers or rows in one encoded value: far above any check's need (the grader holds its own cap)
FUNCTIONS: list = []  # the functions sent to the grader, by handle (their index)
DTYPES = {str(t): t for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                              torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)}
DENIED_EVENTS = {
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "shutil.move", "os.truncate", "os.chmod", "os.chown",
    "os.kill", "os.killpg", "os.link", "os.symlink", "socket.connect", "socket.bind", "socket.sendto",
    "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.cdata", "os.chdir",
    "os.chroot", "os.setuid",
}
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.utime", "glob.glob"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class Unencodable(ValueError):
    """A value the protocol does not carry (a module, an open file, a too-large tensor)."""


def encode(value, depth: int = 0):
    """Plain JSON for the kinds of values TODOs produce; tensors keep dtype, shape and whether they need a grad."""
    if depth > 8:
        raise Unencodable("nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # a float's NaN and infinities travel as JSON's NaN, Infinity
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.Tensor):
        if value.numel() > MAX_ITEMS or str(value.dtype) not in DTYPES:
            raise Unencodable(f"a tensor of {value.numel()} {value.dtype} values")
        data = value.detach().cpu()
        data = data.double() if data.is_floating_point() else data  # float64 holds every float16/bfloat16/float32
        return {"tensor": data.flatten().tolist(), "dtype": str(value.dtype), "shape": list(value.shape),
                "requires_grad": value.requires_grad}
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise Unencodable(f"a {type(value).__name__} of {len(value)} items")
        return {type(value).__name__: [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    datasets = sys.modules.get("datasets")  # imported only when a TODO cell uses it
    if datasets is not None and isinstance(value, datasets.Dataset):
        if len(value) > MAX_ITEMS:
            raise Unencodable(f"a dataset of {len(value)} rows")
        return {"dataset": {"columns": list(value.column_names),
                            "rows": [encode(dict(row), depth + 1) for row in value]}}
    if callable(value):
        FUNCTIONS.append(value)
        return {"function": len(FUNCTIONS) - 1}
    return {"object": type(value).__name__}


def decode_argument(item):
    """The grader's inputs, in ``encode``'s form: numbers, strings, tensors (with requires_grad), lists and tuples
    of these."""
    if isinstance(item, dict) and "tensor" in item:
        tensor = torch.tensor(item["tensor"], dtype=DTYPES[item["dtype"]]).reshape(item["shape"])
        return tensor.requires_grad_(True) if item.get("requires_grad") else tensor
    if isinstance(item, dict) and ("list" in item or "tuple" in item):
        kind = list if "list" in item else tuple
        return kind(decode_argument(v) for v in item[kind.__name__])
    return item


def with_gradients(result, inputs: list[torch.Tensor]):
    """``encode(result)``, adding to each tensor that needs a gradient the gradient of its sum for each input."""
    encoded = encode(result)
    outputs = [result] if isinstance(result, torch.Tensor) else list(result) if isinstance(result, tuple) else []
    items = [encoded] if isinstance(result, torch.Tensor) else encoded.get("tuple", []) if outputs else []
    for output, item in zip(outputs, items):
        if isinstance(output, torch.Tensor) and output.requires_grad and inputs:
            grads = torch.autograd.grad(output.sum(), inputs, retain_graph=True, allow_unused=True)
            item["grads"] = [None if g is None else encode(g) for g in grads]
    return encoded


def grading_namespace(codes, train_pairs: list[dict]) -> dict:
    """What the notebook defines before the TODO cells, with the grader's few pairs in place of the student's."""
    train_pairs = [dict(p) for p in train_pairs]
    namespace = {"__name__": "__main__", "lab": lab, "torch": torch, "os": os, "sys": sys,
                 "train_pairs": train_pairs, "test_pairs": train_pairs[:2]}
    if any("Dataset" in code for code in codes):  # importing datasets takes 1-2 s: only for cells that use it
        from datasets import Dataset

        namespace["Dataset"] = Dataset
    return namespace


def install_audit_hook(workdir: Path) -> None:
    """Refuse, from now on, what the module docstring lists (cannot be undone)."""
    import site

    # The Python installation and this package only: not sys.path, which may hold a checkout with the solutions.
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    readable = [Path(p).resolve() for p in roots] + [Path(lab.__file__).resolve().parent, Path("/dev/urandom")]
    workdir = workdir.resolve()

    def inside(path: Path, roots) -> bool:
        return any(path == root or root in path.parents for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event in DENIED_EVENTS:
            raise PermissionError(f"the grader does not allow {event}")
        if event in PATH_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = (workdir / os.fsdecode(args[0])).resolve()  # an absolute path replaces workdir
            mode, flags = (args[1:2] or [None])[0], (args[2:3] or [0])[0]
            writing = event != "open" or any(c in str(mode or "r") for c in "wax+") or bool(
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if inside(path, [workdir]) or (not writing and inside(path, readable)):
                return
            raise PermissionError(f"the grader does not allow access to {path}")

    sys.addaudithook(hook)


def main() -> None:
    """Answer the grader's requests until stdin closes."""
    protocol_in = os.fdopen(os.dup(0), "r")
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    with open(os.devnull, "r+b") as devnull:  # what the student's code writes to fd 1 or 2 goes nowhere
        for fd in (0, 1, 2):
            os.dup2(devnull.fileno(), fd)

    def reply(message: dict) -> None:
        protocol_out.write(json.dumps(message) + "\n")

    def on_timeout(signum, frame):
        raise TimeoutError(f"it ran longer than {timeout} s (an endless loop?)")

    reply({"ready": True})
    first = json.loads(protocol_in.readline())
    timeout = int(first["todo_timeout"])
    signal.signal(signal.SIGALRM, on_timeout)
    namespace = grading_namespace(first["todos"].values(), first["train_pairs"])
    install_audit_hook(Path.cwd())
    errors: dict[str, str | None] = {}
    for todo, code in first["todos"].items():
        signal.alarm(timeout)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                exec(compile(code, f"<TODO {todo}>", "exec"), namespace)  # noqa: S102 - sandboxed on purpose
            errors[todo] = None
        except BaseException as err:  # noqa: BLE001 - SystemExit, TimeoutError, anything the student raised
            errors[todo] = f"the TODO cell raised {checks.describe_error(err)}"
        finally:
            signal.alarm(0)
    reply({"todos": errors})
    for line in protocol_in:
        request = json.loads(line)
        signal.alarm(timeout)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                if "call" in request:
                    args = [decode_argument(a) for a in request["args"]]
                    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
                    message = {"value": with_gradients(FUNCTIONS[int(request["call"])](*args), inputs)}
                elif request["get"] in namespace:
                    message = {"value": encode(namespace[request["get"]])}
                else:
                    raise NameError(f"name {request['get']!r} is not defined")
            signal.alarm(0)
        except BaseException as err:  # noqa: BLE001
            signal.alarm(0)
            message = {"error": [type(err).__name__, str(err)[:300]]}
        reply(message)


if __name__ == "__main__":
    main()
