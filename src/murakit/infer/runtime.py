"""Where and how fast the network runs: device choice, mixed precision, memory format,
and glibc malloc tuning (DenseNet's many short-lived activations otherwise thrash mmap)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# OpenMP passive waiting (idle threads sleep instead of spinning): steadier beside another
# busy process, but on free cores it cost DenseNet training and inference 30-45% on 2 cores
# (bench/contention.py compares it), so murakit does not set it; ThreadGovernor adapts the
# thread count instead. Set it yourself before torch loads where a machine is always shared.
PASSIVE_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE"}


def passive_openmp(environ: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Sets passive OpenMP waiting in ``environ`` where the user set none (neither
    OMP_WAIT_POLICY nor GOMP_SPINCOUNT). Only an environment given to a process before it
    loads torch takes effect (libgomp reads it once)."""
    if "GOMP_SPINCOUNT" not in environ:
        for key, value in PASSIVE_OPENMP.items():
            environ.setdefault(key, value)
    return environ


def openmp_wait(environ: Mapping[str, str] | None = None) -> str:
    """The OpenMP wait policy this process runs with, in words."""
    environ = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" in environ:
        return f"GOMP_SPINCOUNT={environ['GOMP_SPINCOUNT']}"
    policy = environ.get("OMP_WAIT_POLICY", "").upper()
    return {"PASSIVE": "passive wait", "ACTIVE": "active wait"}.get(policy, "default spin-wait")


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False
_START_THREADS = torch.get_num_threads()  # before any ThreadGovernor lowered it


def tune_malloc() -> bool:
    """Keep freed activation memory in the heap instead of returning it to the OS each step
    (measured: fp32 CPU inference 20.5 -> 34.9 img/s). Returns whether it took effect."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = bool(ok)
    return _malloc_tuned


class ThreadGovernor:
    """Matches torch's intra-op threads to the cores other processes leave free.

    Every OpenMP region waits for its slowest thread: when another process takes one of two
    cores, the thread that shares it stalls every region and a two-thread step ran up to 10x
    slower (a single thread on the free core loses only the second core). At most once per
    ``interval`` seconds, :meth:`poll` reads the machine's busy time (/proc/stat) less this
    process's own and its children's (loader workers), and sets the threads to the cores
    left free (a core whose use by others exceeds a quarter counts as taken), between 1 and
    ``max_threads``.

    The thread count changes the order of floating-point sums, so a training run adapted to
    its machine's load is no longer bit-identical to the same run elsewhere (nor resumes to
    the same result). By default (``train`` False) a runtime adapts only while it infers:
    from its first training batch on, it runs at ``max_threads`` for good, as before.
    MURAKIT_ADAPTIVE_THREADS=1 adapts training too; =0 never adapts.

    While fixed threads train, it still reads the load: after ``SLOWED_READINGS`` readings in
    a row that would have cost a thread, it calls ``on_slowed(cores_taken)`` once, so the
    trainer can say why the epoch crawls and how to let it adapt."""

    SLOWED_READINGS = 3

    def __init__(self, max_threads: int, interval: float = 1.0, train: bool = False) -> None:
        self.max_threads = max_threads
        self.train = train
        self.training_seen = False
        self.on_slowed: Callable[[float], None] | None = None
        self._slowed_run = 0
        self.interval = interval
        self.threads = max_threads
        self.changes = 0
        self._hz = os.sysconf("SC_CLK_TCK")
        self._cpus = os.cpu_count() or 1
        self._last: tuple[float, float, float] | None = None
        self._children: dict[str, float] = {}
        self._children_total = 0.0
        self._others = 0.0  # cores other processes used at the last reading

    @staticmethod
    def available() -> bool:
        return Path("/proc/stat").exists()

    def _busy_seconds(self) -> float:
        """CPU-seconds all CPUs have spent busy since boot."""
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
        return (sum(fields) - idle - guest) / self._hz

    def _own_seconds(self) -> float:
        """CPU-seconds of this process and, as deltas, of its live children."""
        own = time.process_time()
        children: dict[str, float] = {}
        for task in Path("/proc/self/task").glob("*/children"):
            try:
                pids = task.read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                ticks = stat.rsplit(")", 1)[1].split()
                children[pid] = (int(ticks[11]) + int(ticks[12])) / self._hz
        delta = sum(t - self._children.get(pid, 0.0) for pid, t in children.items())
        self._children = children
        self._children_total += delta
        return own + self._children_total

    def on_batch(self, training: bool) -> None:
        """Called by the runtime before each batch (``training``: a training batch, i.e. one
        to augment on the device)."""
        if training and not self.train:
            self.training_seen = True
            if self.threads != self.max_threads:
                torch.set_num_threads(self.max_threads)
                self.threads = self.max_threads
            self._watch_fixed()
        if not self.training_seen:
            self.poll()

    def poll(self) -> int:
        """The thread count for the next step (set in torch when it changes)."""
        want = self._wanted_threads()
        if want is not None and want != self.threads:
            torch.set_num_threads(want)
            self.threads = want
            self.changes += 1
        return self.threads

    def _watch_fixed(self) -> None:
        """Fixed-thread training: count readings in a row that would have cost a thread."""
        if self.on_slowed is None:
            return
        want = self._wanted_threads()
        if want is None:
            return
        self._slowed_run = self._slowed_run + 1 if want < self.max_threads else 0
        if self._slowed_run == self.SLOWED_READINGS:
            self.on_slowed(self._others)
            self.on_slowed = None  # once per run

    def _wanted_threads(self) -> int | None:
        """The threads the cores left free allow, from the load since the last reading (None:
        read less than ``interval`` ago, the first reading, or /proc unreadable)."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval:
            return None
        try:
            busy, own = self._busy_seconds(), self._own_seconds()
        except (OSError, ValueError, IndexError):
            return None
        want = None
        if self._last is not None:
            wall = now - self._last[0]
            self._others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / wall
            # a core counts as taken from a quarter of a core's use on: spinning OpenMP threads
            # hold on to their cores, so other work shows up smaller than it is
            want = max(1, min(self.max_threads, self._cpus - math.ceil(self._others - 0.25)))
        self._last = (now, busy, own)
        return want


def adaptive_threads_setting() -> str:
    """MURAKIT_ADAPTIVE_THREADS: "0" never, "1" inference and training, else inference."""
    value = os.environ.get("MURAKIT_ADAPTIVE_THREADS", "").strip()
    return value if value in ("0", "1") else "inference"


def choose_backend(backend: str, model_dir: Path | str | None, onnx_path: Path | None) -> str:
    """ "auto" -> "onnx" where ONNX Runtime is installed and an exported graph is at hand (the
    one given, or model.onnx with its sidecar in the model folder, no older than the folder's
    checkpoints), else "torch"; any other name as given. On a 2-core AVX2 CPU, ONNX Runtime ran a
    3-image DenseNet-169 study in about half torch's time, its study probabilities within 1e-5
    (bench/predict_latency.py)."""
    if backend != "auto":
        return backend
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    if onnx_path is not None:
        return "onnx"
    if model_dir is None:
        return "torch"
    graph = Path(model_dir) / "model.onnx"
    if not (graph.exists() and graph.with_name(graph.name + ".json").exists()):
        return "torch"
    newest = max((p.stat().st_mtime for p in Path(model_dir).rglob("*.pt")), default=0.0)
    return "onnx" if graph.stat().st_mtime >= newest else "torch"


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Runtime:
    """The device and the precision/memory-format choices made for it."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    channels_last: bool
    threads: ThreadGovernor | None = field(default=None, compare=False, repr=False)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling against underflow; bf16 and fp32 do not."""
        return torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batch(self, images: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """A loader batch on the device, ready for the model. Training batches arrive as
        (uint8 squares, augmentation parameters) and are augmented here, on the device.
        On the CPU, the thread count follows the cores left free (:class:`ThreadGovernor`)."""
        if self.threads is not None:
            self.threads.on_batch(training=isinstance(images, (tuple, list)))
        if isinstance(images, (tuple, list)):
            from murakit.data.transforms import augment_batch

            squares, params = (t.to(self.device, non_blocking=True) for t in images)
            images = augment_batch(squares, params)
        else:
            images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def batch_with_masks(
        self, images: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch whose squares carry a box-mask channel: (images, masks)."""
        if self.threads is not None:
            self.threads.on_batch(training=True)
        from murakit.data.transforms import augment_batch_with_masks

        squares, params = (t.to(self.device, non_blocking=True) for t in images)
        batch, masks = augment_batch_with_masks(squares, params)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, masks

    def describe(self) -> str:
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}
        layout = ", channels_last" if self.channels_last else ""
        threads = ""
        if self.threads:
            when = "" if self.threads.train else " when inferring"
            threads = f", 1-{self.threads.max_threads} threads{when}"
        return f"{self.device} ({precision[self.amp_dtype]}{layout}{threads})"


def make_runtime(
    device: str = "auto",
    mixed_precision: bool = True,
    channels_last: bool = True,
    adaptive_threads: bool | None = None,
) -> Runtime:
    """CUDA when present (fp16 AMP), else CPU with bf16 autocast where the CPU has bf16 and
    torch's threads following the cores left free (:class:`ThreadGovernor`). ``adaptive_threads``
    True: when inferring and training; False: never; None: as MURAKIT_ADAPTIVE_THREADS says
    (1: both, 0: never, unset: when inferring only, so that training stays bit-reproducible)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if dev.index is not None:
            torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    governor = None
    if dev.type != "cuda":
        tune_malloc()
        amp = torch.bfloat16 if cpu_supports_bf16() else None
        setting = adaptive_threads_setting()
        if adaptive_threads is not None:
            setting = "1" if adaptive_threads else "0"
        most = max(torch.get_num_threads(), _START_THREADS)
        if setting != "0" and most > 1 and ThreadGovernor.available():
            governor = ThreadGovernor(most, train=setting == "1")
    return Runtime(dev, amp if mixed_precision else None, channels_last, governor)
