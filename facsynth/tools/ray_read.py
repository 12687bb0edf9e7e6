"""Read a corpus through the model and SAE on Ray: encoder actors, the store written by the driver.

``facsynth measure --ray`` and ``facsynth features collect --ray`` hand a
:class:`facsynth.tools.reader.Reader` an :class:`EncoderPool`. The reader plans the
corpus exactly as it reads it alone (chunks of samples, what the store already holds,
duplicates) and the pool reads each planned chunk on a Ray actor: one subject model and
SAE per actor, a GPU per actor where the cluster has GPUs, chunks handed out by Ray's
``ActorPool``.
Actors return each sample's :class:`SampleFeatures`; the driver saves them through the
same ``Reader.read`` code as the single-process path, so the store rows are the same.

Why Ray actors and not a Ray Data actor pool: a Ray Data pool lives for one dataset's
execution, and a command reads several (the data, then the anchor; span collection's
passes), so each read paid the actors' start and model load again, and its streaming
executor ran in the driver beside the actors. The chunks are planned by the driver from
the store anyway; actors kept for the pool's life load the model once.

Why whole chunks and the driver's thread count: on CPU a sample's numbers depend on its
batch (padding width and the shared template prefix change float rounding) and on the
number of torch threads (matrix products split their sums by thread). The encoder
forms its batches within a chunk; every planned chunk is read by one actor with the
encoder's own batching, and each actor runs as many torch threads as this process does
(and reserves as many CPUs). So the readings are bit-identical to the single-process
ones. Fewer threads per actor (more actors) is allowed and faster on a small machine,
but then the float rounding differs from a single-process read.

:func:`ray_reading` starts a local Ray instance (``address`` None) or connects to a
cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), and shuts Ray down afterwards
when it started or connected it. Ray is the ``ray`` extra: ``pip install 'facsynth[ray]'``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facsynth.errors import FacsynthError
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Sample

if TYPE_CHECKING:
    from facsynth.tools.encoder import FeatureEncoder, Progress
    from facsynth.tools.reader import Reader

log = logging.getLogger(__name__)

LOCAL = "local"
"""The ``--ray`` value (and the flag alone) that starts a local Ray instance."""
CONNECT_TIMEOUT_S = 5.0
"""How long a cluster address may take to accept a TCP connection before we give up."""


QUIET = {"log_to_driver": False, "logging_level": logging.ERROR}
"""Ray's own logs stay out of the terminal (facsynth logs what it does; Ray's are in /tmp/ray)."""


class RayError(FacsynthError):
    """Ray is not installed, the cluster cannot be reached, or an actor failed."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError as exc:
        raise RayError(
            f"--ray needs Ray, which is not installed ({exc}); install the extra: pip install 'facsynth[ray]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (Ray itself waits minutes)."""
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, ready: a local instance (``address`` None or ``local``, ``num_cpus`` its size) or a cluster.

    A Ray already initialised in this process is used as it is and left running;
    otherwise Ray is shut down (the local instance stopped, the cluster disconnected) on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = address in (None, LOCAL)
    if not local and address != "auto":
        _check_reachable(address)
    try:
        if local:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **QUIET)
        else:
            ray.init(address=address, **QUIET)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "start a local Ray instance" if local else f"connect to the Ray cluster at {address}"
        raise RayError(f"cannot {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# -- the actors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """What an actor needs to build the driver's encoder again: specs, not weights."""

    model: str
    model_fingerprint: str
    sae: str
    sae_hash: str
    activation: str
    layer: int
    template: str
    batch_size: int
    max_tokens: int
    chunk_size: int
    keep_pooled: bool
    reuse_prefix: bool
    dtype: str
    threads: int
    """torch threads per actor (the driver's: the same float rounding)."""

    @classmethod
    def of(cls, encoder: FeatureEncoder, threads: int) -> EncoderSpec:
        from facsynth.tools import model as model_mod

        subject, sae = encoder.subject, encoder.sae
        if sae is None:
            raise RayError("reading on Ray needs an encoder with an SAE")
        source = subject.source
        try:
            same = model_mod.resolve(source.name) == source
        except FacsynthError:
            same = False
        model = source.name if same else (str(Path(source.path) / source.gguf_file) if source.gguf_file else source.path)
        dtype = {v: k for k, v in model_mod.DTYPES.items()}[subject.dtype]
        return cls(
            model=model, model_fingerprint=source.fingerprint,
            sae=str(sae.path.resolve()) if sae.path is not None else sae.name.replace("/", ":", 1), sae_hash=sae.hash,
            activation=sae.activation, layer=encoder.layer, template=encoder.template, batch_size=encoder.batch_size,
            max_tokens=encoder.max_tokens, chunk_size=encoder.chunk_size, keep_pooled=encoder.keep_pooled,
            reuse_prefix=encoder.reuse_prefix, dtype=dtype, threads=threads,
        )

    def build(self, device: str) -> FeatureEncoder:
        """Load the model and SAE on this worker; refuse weights that differ from the driver's."""
        import torch

        from facsynth.tools import model as model_mod
        from facsynth.tools.encoder import FeatureEncoder
        from facsynth.tools.sae import load_sae

        torch.set_num_threads(self.threads)
        subject = model_mod.load(self.model, device=device, dtype=self.dtype)
        if subject.source.fingerprint != self.model_fingerprint:
            raise RayError(f"model {self.model} on this Ray worker differs from the driver's (fingerprint)")
        sae = load_sae(self.sae, device=device, activation=self.activation)  # type: ignore[arg-type]
        if sae.hash != self.sae_hash:
            raise RayError(f"SAE {self.sae} on this Ray worker differs from the driver's (hash)")
        return FeatureEncoder(
            subject, sae, self.layer, template=self.template, batch_size=self.batch_size,  # type: ignore[arg-type]
            max_tokens=self.max_tokens, chunk_size=self.chunk_size, keep_pooled=self.keep_pooled,
            reuse_prefix=self.reuse_prefix,
        )


class _EncodeActor:
    """A Ray actor: one encoder (the model and SAE load once, when the actor starts), one planned
    chunk per call, for as long as the pool lives."""

    def __init__(self, spec: EncoderSpec, device: str) -> None:
        self.encoder = spec.build(device)

    def ready(self) -> bool:
        return True

    def encode(self, samples: list[Sample]) -> bytes:
        # list(): the encoder's own chunking, the same batches as the single-process read. One
        # pickle, so the driver gets ordinary (writable) arrays and no object-store pins.
        return pickle.dumps(list(self.encoder.encode(samples)), protocol=pickle.HIGHEST_PROTOCOL)


# -- the pool --------------------------------------------------------------------------------------


@dataclass
class EncoderPool:
    """Reads planned chunks on Ray actors built from ``encoder``'s spec; Ray must be initialised.

    ``threads``: torch threads (and reserved CPUs) per CPU actor; None: as many as this
    process runs, which keeps the readings bit-identical to a single-process read.
    ``actors`` None: one per GPU where the cluster has GPUs, else as many as the
    cluster's CPUs hold; more CPU actors than that get fewer threads each (and a
    warning: their float rounding differs). Actors start when the first read needs them
    (no more than it has chunks) and stay for every later read (the seed, then the anchor,
    then span collection load the model once per actor), until :meth:`close` or Ray's shutdown.
    """

    encoder: FeatureEncoder
    actors: int | None = None
    threads: int | None = None
    _started: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        import torch

        if self.actors is not None and self.actors < 1:
            raise RayError(f"the number of Ray actors must be at least 1, got {self.actors}")
        if self.threads is not None and self.threads < 1:
            raise RayError(f"threads per Ray actor must be at least 1, got {self.threads}")
        self.threads = self.threads or torch.get_num_threads()
        EncoderSpec.of(self.encoder, self.threads)  # fails here, before Ray starts anything

    def layout(self) -> tuple[int, int, int]:
        """(actors, CPUs per actor, GPUs per actor) on the cluster Ray is connected to."""
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        if gpus:
            return (self.actors or gpus), 1, 1
        threads = min(self.threads, cpus)  # an actor asking for more CPUs than the cluster has never starts
        if self.actors is None:
            return max(1, cpus // threads), threads, 0
        return self.actors, max(1, min(threads, cpus // self.actors)), 0

    def start(self, n: int | None = None) -> list[Any]:
        """The pool's actors, at least ``min(n, layout)`` of them (None: the layout's number),
        started and loaded (their model and SAE read) before this returns."""
        ray = import_ray()
        actors, cpus, gpus = self.layout()
        want = actors if n is None else min(actors, n)
        if len(self._started) >= want:
            return self._started
        threads = cpus if not gpus else self.threads
        if threads != self.threads:
            log.warning(
                "Ray actors run %d torch thread(s), this process %d: readings round differently from a "
                "single-process read", threads, self.threads,
            )
        spec, device = EncoderSpec.of(self.encoder, threads), "cuda" if gpus else "cpu"
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(_EncodeActor)
        new = [remote.remote(spec, device) for _ in range(want - len(self._started))]
        log.info("starting %d Ray actor(s) (%g CPU, %g GPU each)", len(new), cpus, gpus)
        try:
            ray.get([a.ready.remote() for a in new])
        except ray.exceptions.RayError as exc:
            for a in new:
                ray.kill(a)
            raise RayError(f"reading on Ray failed: {_root_cause(exc)}") from exc
        self._started += new
        return self._started

    def close(self) -> None:
        """Stop the actors (Ray's shutdown stops them too)."""
        if not self._started:
            return
        import ray

        if ray.is_initialized():
            for a in self._started:
                ray.kill(a)
        self._started = []

    def encode_chunks(
        self, chunks: Sequence[list[Sample]], progress: Progress | None = None
    ) -> Iterator[list[SampleFeatures]]:
        """One list of :class:`SampleFeatures` per chunk, in chunk order, as soon as each is ready.

        Ray's :class:`ray.util.ActorPool` hands the chunks to the actors, the next one to an
        actor as soon as it returns one (it starts on it while the driver saves the last)."""
        if not chunks:
            return
        ray = import_ray()
        from ray.util import ActorPool

        actors = self.start(len(chunks))[: len(chunks)]
        log.info("reading %d chunk(s) on %d Ray actor(s)", len(chunks), len(actors))
        done = 0
        try:
            for packed in ActorPool(actors).map(lambda actor, chunk: actor.encode.remote(chunk), chunks):
                feats = pickle.loads(packed)
                if progress is not None:
                    progress(len(feats), sum(sf.n_tokens for sf in feats))
                yield feats
                done += 1
        except ray.exceptions.RayError as exc:
            raise RayError(f"reading on Ray failed: {_root_cause(exc)}") from exc
        if done != len(chunks):
            raise RayError(f"Ray returned {done} of {len(chunks)} chunks")


def _root_cause(exc: BaseException) -> str:
    """The innermost error a Ray task raised, on one line (a facsynth error by its message alone)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__  # type: ignore[assignment]
    lines = [ln.strip() for e in chain for ln in str(e).splitlines() if ln.strip()]
    for line in reversed(lines):  # Ray's messages end with the remote traceback's last line
        m = re.match(r"^([\w.]+(?:Error|Exception)): (.+)$", line)
        if m:
            return m.group(2) if m.group(1).startswith("facsynth.") else line
    return lines[-1] if lines else type(chain[0]).__name__


@contextmanager
def ray_reading(
    reader: Reader,
    address: str | None = None,
    *,
    actors: int | None = None,
    threads: int | None = None,
    num_cpus: int | None = None,
) -> Iterator[EncoderPool]:
    """While open, ``reader`` reads (``measure``, ``count``, span collection) on Ray actors.

    ``address`` None or ``local`` starts a local Ray instance with ``num_cpus`` CPUs (default:
    all); ``auto`` or an address joins a cluster. ``actors`` and ``threads``: see :class:`EncoderPool`. Ray is shut down afterwards when it was
    started here. The store is written by this process, as without Ray.
    """
    with ray_session(address, num_cpus=num_cpus):
        pool = EncoderPool(reader.encoder, actors=actors, threads=threads)
        previous, reader.pool = reader.pool, pool
        try:
            yield pool
        finally:
            reader.pool = previous
            pool.close()

