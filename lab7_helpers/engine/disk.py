"""Models wait on disk while a stage does not use them: their memory is free meanwhile (CPU, Linux for the
memory-map case)."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import tempfile
import time
import weakref
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch


WEIGHT_FOLDER_PREFIX = "lab7_weights_"
PROCESS_START = time.time()  # about when this process started: the engine is imported at start-up


def remove_stale_weight_folders(root: str | None = None) -> list[Path]:
    """Remove the weight folders (in ``root``, default: the temporary folder) that killed runs left behind: made
    before this process started, by a process (its pid is in the name) that no longer exists. Returns them."""
    stale = [folder for folder in Path(root or tempfile.gettempdir()).glob(f"{WEIGHT_FOLDER_PREFIX}*_*")
             if left_by_a_dead_process(folder)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def left_by_a_dead_process(folder: Path) -> bool:
    """Whether ``folder`` (``lab7_weights_<pid>_...``) is older than this process and its process is gone."""
    pid = folder.name[len(WEIGHT_FOLDER_PREFIX):].split("_")[0]
    try:
        if not pid.isdigit() or folder.stat().st_mtime >= PROCESS_START:
            return False
        os.kill(int(pid), 0)  # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # the folder went meanwhile, or the process belongs to another user
        return False
    return False


def process_folder(kind: str = "") -> tempfile.TemporaryDirectory:
    """A new temporary folder of this process, after removing those that killed runs left behind. It goes on
    every exit Python sees (an error, Ctrl-C; ``lab7 run`` turns SIGTERM into one); the pid in its name lets a
    later run remove it (``remove_stale_weight_folders``) if this process is killed outright."""
    remove_stale_weight_folders()
    return tempfile.TemporaryDirectory(prefix=f"{WEIGHT_FOLDER_PREFIX}{os.getpid()}_{kind}")


@contextmanager
def weights_on_disk(*models: torch.nn.Module) -> Iterator[None]:
    """Keep the parameters of ``models`` on disk while the block runs; bring them back exactly after.

    For models that the block does not use (the reference while DPO trains on precomputed reference
    log-probs, the KL model while DPO trains): their memory is free meanwhile. Tied weights stay tied.
    Weights that are still the untouched memory map of the model's safetensors file (a model as loaded, such
    as the frozen reference) are on disk already: they are only dropped from memory (``drop_file_pages``) and
    read back from the file when next used. Other weights are saved to a temporary file.
    """
    with process_folder() as folder:
        parked = []
        for i, model in enumerate(models):
            if drop_file_pages(model):
                continue
            before = weights_fingerprint(model)
            params = dict(model.named_parameters())  # each tied parameter once
            path = Path(folder) / f"{i}.pt"
            torch.save({name: p.detach() for name, p in params.items()}, path)
            for p in params.values():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            parked.append((model, before, params, path))
        try:
            yield
        finally:
            for model, before, params, path in parked:
                saved = torch.load(path, weights_only=True)
                for name, p in params.items():
                    p.data = saved[name]
                REFERENCE_ROWS.moved(model, before)  # the same weights at new addresses


MADV_DONTNEED = 4  # from Linux's <sys/mman.h>
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)")


def clean_file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of files in which the process changed no page (Linux; else
    none). Such pages can be dropped from memory at any time: the file (or the system's file cache, which
    writes it) has their exact content. A changed page of a private map is copied into anonymous memory,
    which smaps counts as ``Anonymous``."""
    if platform.system() != "Linux":
        return []
    mappings: list[list] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            header = _MAPPING.match(line)
            if header:
                start, end, inode = int(header[1], 16), int(header[2], 16), int(header[3])
                mappings.append([start, end, inode != 0])  # inode 0: anonymous memory, not a file
            elif line.startswith("Anonymous:") and int(line.split()[1]) > 0:
                mappings[-1][2] = False  # a page was changed: only memory holds it now
    return [(start, end) for start, end, clean in mappings if clean]


def drop_file_pages(model: torch.nn.Module) -> bool:
    """If every parameter of ``model`` lies in a clean memory map of a file (``clean_file_mappings``), let the
    system drop those pages from memory now and return True; they are read back from the file when next used.
    Otherwise change nothing and return False."""
    params = [p for p in model.parameters() if p.numel()]
    if not params or any(p.device.type != "cpu" for p in params):
        return False
    mappings, used = clean_file_mappings(), set()
    for p in params:
        start = p.data_ptr()
        end = start + p.numel() * p.element_size()
        mapping = next(((lo, hi) for lo, hi in mappings if lo <= start and end <= hi), None)
        if mapping is None:
            return False
        used.add(mapping)
    libc = ctypes.CDLL(None, use_errno=True)
    return all(libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) == 0 for lo, hi in used)


def shares_weights(model: torch.nn.Module, others) -> bool:
    """Whether ``model`` shares weights with another entry of ``others`` (itself passed twice counts)."""
    mine = {p.data_ptr() for p in model.parameters()}
    others = [other for other in others if other is not model] + [model] * (sum(o is model for o in others) - 1)
    return any(mine & {p.data_ptr() for p in other.parameters()} for other in others)


def unused_unless_shared(model: torch.nn.Module, others) -> object:
    """``weights_on_disk(model)``, unless ``model`` shares weights with another of ``others`` (the same model
    passed as policy and reference), which the block still uses."""
    return nullcontext() if shares_weights(model, others) else weights_on_disk(model)


def reference_logits_on_disk(stack: ExitStack, models, ref: torch.nn.Module, step_batches: list[dict], amp,
                             park: bool = True):
    """Twin of ``training.reference_logits``: the frozen ``ref``'s logits on every distinct batch of
    ``step_batches`` (at the response positions only, in the layout of ``packed.kl_logits_and_labels``), from the
    process's ``REFERENCE_ROWS`` on disk, which computes those it does not hold yet. With ``park`` (a training
    session), ``ref``'s weights then wait on disk until the session (``stack``) ends. Where ``ref`` shares
    weights with a model of the session (the policy passed as its own reference), each step's logits must see
    the updates so far: they are computed when asked for, as in the core."""
    from .packed import as_one_sequence, response_rows

    if shares_weights(ref, models):
        @torch.no_grad()
        def computed_now(i: int) -> torch.Tensor:
            with amp():
                return as_one_sequence(response_rows(ref, step_batches[i]))

        return computed_now
    files = REFERENCE_ROWS.files(ref, step_batches, amp)
    if park:
        stack.enter_context(weights_on_disk(ref))

    def at(i: int) -> torch.Tensor:
        return as_one_sequence(torch.load(files[i], weights_only=True))

    return at


class ReferenceRowStore:
    """The frozen reference's logit rows (``packed.response_rows``) per batch, on disk for the rest of the process.

    A reference is frozen, so its rows on a batch never change: the KL update, each training of a beta sweep
    and each measurement of the sweep's ``nll_and_kl`` compute them once between them. The store holds one
    reference's rows at a time, and forgets them when any of its weights is replaced or written in place (a
    parameter's address or version counter changes) or the model is gone. It keeps at most ``limit_bytes``,
    dropping the oldest batches first, in a ``process_folder``."""

    def __init__(self, limit_bytes: int = 2 << 30):
        self.limit_bytes = limit_bytes
        self._owner, self._fingerprint, self._folder = None, None, None
        self._files: dict[bytes, tuple[Path, int]] = {}  # batch key -> (file, size), oldest first
        self.computed = 0  # batches computed so far (tests count them)

    def files(self, ref: torch.nn.Module, step_batches: list[dict], amp) -> list[Path]:
        """The file holding ``ref``'s rows for each of ``step_batches`` (the same file for equal batches)."""
        from .packed import response_rows

        self._forget_unless(ref)
        keys = [batch_key(batch) for batch in step_batches]
        with torch.inference_mode():
            for key, batch in zip(keys, step_batches):
                if key in self._files:
                    self._files[key] = self._files.pop(key)  # now the newest
                    continue
                with amp():
                    rows = response_rows(ref, batch)
                path = Path(self._folder.name) / f"{self.computed}.pt"
                torch.save(rows, path)
                self._files[key] = (path, rows.numel() * rows.element_size())
                self.computed += 1
        paths = [self._files[key][0] for key in keys]
        self._drop_oldest(keep=set(keys))
        return paths

    def moved(self, model: torch.nn.Module, before: tuple) -> None:
        """``model``'s weights, which had ``before`` as their fingerprint, were copied back unchanged to new
        addresses (``weights_on_disk``): its rows still hold."""
        if self._owner is not None and self._owner() is model and self._fingerprint == before:
            self._fingerprint = weights_fingerprint(model)

    def clear(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
        self._owner, self._fingerprint, self._folder, self._files = None, None, None, {}

    def _forget_unless(self, ref: torch.nn.Module) -> None:
        fingerprint = weights_fingerprint(ref)
        if self._owner is None or self._owner() is not ref or self._fingerprint != fingerprint:
            self.clear()
            self._owner, self._fingerprint = weakref.ref(ref), fingerprint
            self._folder = process_folder("reference_")

    def _drop_oldest(self, keep: set[bytes]) -> None:
        total = sum(size for _, size in self._files.values())
        for key in [key for key in self._files if key not in keep]:
            if total <= self.limit_bytes:
                break
            path, size = self._files.pop(key)
            path.unlink(missing_ok=True)
            total -= size


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when a parameter of ``model`` is replaced (its address) or written in place (its version)."""
    return tuple((p.data_ptr(), p._version, tuple(p.shape)) for p in model.parameters())


def batch_key(batch: dict[str, torch.Tensor]) -> bytes:
    """The tokens, attention mask and labels of ``batch``: what its reference rows depend on."""
    return b"|".join(str(tuple(batch[name].shape)).encode() + batch[name].cpu().numpy().tobytes()
                     for name in ("input_ids", "attention_mask", "labels"))


REFERENCE_ROWS = ReferenceRowStore()
