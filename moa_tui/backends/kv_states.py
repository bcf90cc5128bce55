"""Which saved model state a call may reuse: per-role snapshots of one loaded model, and the rule.

One loaded model may serve several roles (the pool loads each file once). llama.cpp keeps one memory
per context and llama-cpp-python reuses only the longest common prefix of the previous call's
tokens, so each role's call would evict the other's prefix and every turn would evaluate the whole
history again. `RoleStates` keeps a small store of snapshots of sequence 0 (`SessionStates`) and,
before each call, restores the one that saves the most work (`choose_reuse`).

Two kinds of memory, two rules:

- **Attention KV cache** (most models): a cached state can be cut back to any shorter prefix, so the
  state sharing the longest prefix with the new prompt is restored and llama-cpp-python cuts it.
  A role's state is snapshotted lazily, when another role is about to overwrite it.
- **Recurrent state** (Mamba, RWKV; and the Gated DeltaNet / SSM / short-conv layers of hybrid
  models such as Qwen3.5, LFM2, Nemotron-H, Jamba): the state after n tokens holds no trace of the
  shorter prefixes, so it cannot be cut back. Only an *exact* state may be reused: one whose tokens
  are a prefix of the new prompt and that ends there; anything else means evaluating the prompt
  from scratch. (llama.cpp b10454 refuses a partial cut of a recurrent memory, and llama-cpp-python
  then resets, so answers were never wrong; what this adds is choosing a state that *can* be
  extended, instead of restoring one only to throw it away.) The end of a call is such a state for
  the role's next prompt only if its whole answer comes back verbatim, which a MoA pipeline never
  does (the next prompt holds the final reply and the user's message without references), so for
  these models each role keeps one *checkpoint* instead: the state at the start of the prompt's last
  message (system prompt + history), taken while the prompt is evaluated. The next turn's prompt
  extends it exactly.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..planner import SAVED_STATE_BYTES_MAX, SAVED_STATES_MAX

log = logging.getLogger("moa_tui.llama_cpp")

# Bounds of one model's snapshot store (planner.py says why these; the memory plan counts them too).
DEFAULT_MAX_STATES = SAVED_STATES_MAX
DEFAULT_MAX_STATE_BYTES = SAVED_STATE_BYTES_MAX
# Restoring a snapshot costs a memcpy (about 3 ms per 1000 SmolLM2 tokens here); evaluating this many
# prompt tokens costs more than that on any device, so a smaller gain is not worth the load.
MIN_RESTORE_GAIN = 16


@dataclass
class KVSnapshot:
    """The memory of sequence 0 (`llama_state_seq_get_data`) and the token ids it holds."""

    tokens: Any  # numpy int array: the ids of the cached positions 0..n-1
    data: Any  # ctypes uint8 array owned by the snapshot (no second copy into `bytes`)
    size: int

    @property
    def nbytes(self) -> int:
        return self.size + int(self.tokens.nbytes)


@dataclass
class StateReuseStats:
    """What the snapshot store did over the model's life (for benchmarks, logs and tests)."""

    saves: int = 0
    restores: int = 0
    save_seconds: float = 0.0
    restore_seconds: float = 0.0
    last_save_bytes: int = 0
    skipped_too_big: int = 0
    checkpoints: int = 0  # recurrent models: states saved at a prompt's history boundary
    resets: int = 0  # recurrent models: calls that found no exact state and evaluated from scratch


class SessionStates:
    """An LRU store of snapshots, one per session (role), bounded by count and bytes.

    Least recently used snapshots go first when more than `max_states` are kept or their bytes
    exceed `max_bytes`; `max_states=0` disables it.
    """

    def __init__(self, max_states: int = DEFAULT_MAX_STATES, max_bytes: int = DEFAULT_MAX_STATE_BYTES) -> None:
        self.max_states = max(0, max_states)
        self.max_bytes = max(0, max_bytes)
        self._items: OrderedDict[str, KVSnapshot] = OrderedDict()
        self.nbytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_states > 0 and self.max_bytes > 0

    def fits(self, nbytes: int) -> bool:
        return self.enabled and nbytes <= self.max_bytes

    def put(self, session: str, snapshot: KVSnapshot) -> None:
        """Keep `snapshot` as `session`'s newest state (replacing its older one), then evict LRU ones."""
        self.drop(session)
        if not self.fits(snapshot.nbytes):
            return
        self._items[session] = snapshot
        self.nbytes += snapshot.nbytes
        while len(self._items) > self.max_states or self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def get(self, session: str) -> KVSnapshot | None:
        return self._items.get(session)

    def touch(self, session: str) -> None:
        if session in self._items:
            self._items.move_to_end(session)

    def drop(self, session: str) -> None:
        old = self._items.pop(session, None)
        if old is not None:
            self.nbytes -= old.nbytes

    def items(self) -> Iterator[tuple[str, KVSnapshot]]:
        return iter(list(self._items.items()))

    def __contains__(self, session: object) -> bool:
        return session in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


def common_prefix(cached: Any, tokens: Any) -> int:
    """Length of the longest common prefix of two token sequences (numpy, not a Python loop)."""
    import numpy as np

    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    a = np.asarray(cached[:n], dtype=np.int64)
    b = np.asarray(tokens[:n], dtype=np.int64)
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if diff.size else n


# -- the rule -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reuse:
    """What to do with the model's memory before a call evaluates its prompt."""

    restore: str | None = None  # the snapshot to load first (its session key)
    reset: bool = False  # clear the memory first: it holds a recurrent state that cannot be cut back
    kept: int = 0  # prompt tokens whose state is reused (an attention cache may still replay one)


def exact_length(state_tokens: Any, prompt: Any, *, has_logits: bool = False) -> int | None:
    """How many prompt tokens a recurrent state covers if it can be extended to `prompt`; else None.

    It must hold a prefix of the prompt and nothing more. Covering the whole prompt is only enough
    when its last logits are live (not after a restore: a snapshot holds no logits, and replaying
    the last token would mean cutting the state back by one).
    """
    n = len(state_tokens)
    if n > len(prompt) or common_prefix(state_tokens, prompt) != n:
        return None
    if n == len(prompt) and n > 0 and not has_logits:
        return None
    return n


def choose_reuse(
    cached: Any,
    snapshots: Iterable[tuple[str, Any]],
    prompt: Any,
    session: str | None,
    *,
    recurrent: bool,
    cached_has_logits: bool = False,
) -> Reuse:
    """The state to start `prompt` from: the live cache (`cached` tokens), a snapshot, or nothing.

    snapshots: (session key, its tokens). A snapshot is restored only when it saves at least
    MIN_RESTORE_GAIN tokens over the live cache; on a tie the caller's own session wins (it is the
    one its next call will extend). An attention cache is reused by its longest common prefix; a
    recurrent one only when exact (`exact_length`), and a live cache that is not exact is reset.
    """
    if recurrent:
        live = exact_length(cached, prompt, has_logits=cached_has_logits)
        current = live or 0
    else:
        live = current = common_prefix(cached, prompt)
    best_key, best_len = None, current
    for key, tokens in snapshots:
        shared = exact_length(tokens, prompt) if recurrent else common_prefix(tokens, prompt)
        if shared is None:
            continue
        if shared > best_len or (shared == best_len and best_key is not None and key == session):
            best_key, best_len = key, shared
    if best_key is not None and best_len - current >= MIN_RESTORE_GAIN:
        return Reuse(restore=best_key, kept=best_len)
    if live is None:
        return Reuse(reset=len(cached) > 0)
    return Reuse(kept=current)


def checkpoint_at(boundary: int, prompt_len: int, kept: int) -> int | None:
    """Where to checkpoint a recurrent state while evaluating a prompt: its history boundary, when
    that is new ground (past what was reused) and leaves at least one token to evaluate after it."""
    if MIN_RESTORE_GAIN <= boundary < prompt_len and boundary > kept:
        return boundary
    return None


# -- the store bound to a model -----------------------------------------------------------------------


def is_recurrent_model(llm: Any) -> bool:
    """Whether the model's memory has recurrent layers (pure recurrent or hybrid)."""
    import llama_cpp

    model = llm.model
    return bool(llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model))


class RoleStates:
    """The per-role states of one llama-cpp-python `Llama`: what to save, restore, reset, checkpoint.

    Not thread-safe: the model's caller serializes calls. Why not `Llama.save_state()`: it also
    copies the logits buffer (up to n_batch x n_vocab floats: 100 MB for SmolLM2) although with
    logits_all=False those rows are never read. Measured on SmolLM2 at n_ctx 2048, 1000 cached
    tokens: the sequence state is 22 MiB, saved in ~6 ms and restored in ~3 ms; save_state() is
    118 MiB and 29 ms save / 28 ms load warm (150-550 ms on a cold first save).
    """

    def __init__(self, llm: Any, model_id: str, max_states: int, max_bytes: int, *,
                 recurrent: bool | None = None) -> None:
        self._llm = llm
        self.model_id = model_id
        self.recurrent = is_recurrent_model(llm) if recurrent is None else recurrent
        self.store = SessionStates(max_states, max_bytes)
        self.stats = StateReuseStats()
        self.owner: str | None = None  # the session whose tokens the memory holds now
        self._owner_saved = True  # whether the store already has the memory as it is now

    def cached_tokens(self) -> Any:
        """Token ids whose state the context holds (llama-cpp-python's own prefix-matching view)."""
        return self._llm.input_ids[: self._llm.n_tokens]

    def before_call(self, session: str | None, tokens: list[int]) -> Reuse:
        """Save the previous session's memory if it is about to be overwritten; start from the best state.

        Then the memory belongs to `session`. A failure here never fails the call: the prompt is then
        simply evaluated again (reuse is only an optimization).
        """
        try:
            switching = self.owner is not None and self.owner != session and not self._owner_saved
            if switching and self.store.enabled and not self.recurrent:
                self.save(self.owner)
            reuse = self._decide(session, tokens)
            if reuse.restore is not None:
                self._restore(reuse.restore)
            elif reuse.reset:
                self.stats.resets += 1
                self._llm.reset()
        except Exception as exc:  # MemoryError, a llama.cpp refusal
            log.warning("%s: KV state reuse failed (%s: %s); evaluating the prompt", self.model_id,
                        type(exc).__name__, exc)
            self.store.clear()
            self._llm.reset()
            reuse = Reuse()
        # From here on the memory holds this session's tokens; a recurrent model never saves at a switch.
        self.owner, self._owner_saved = session, self.recurrent
        return reuse

    def _decide(self, session: str | None, tokens: list[int]) -> Reuse:
        snapshots: list[tuple[str, Any]] = []
        if self.store.enabled and session is not None:
            snapshots = [(key, snap.tokens) for key, snap in self.store.items()]
        has_logits = not getattr(self._llm, "_requires_eval", True)
        return choose_reuse(self.cached_tokens(), snapshots, tokens, session, recurrent=self.recurrent,
                            cached_has_logits=has_logits)

    def save(self, session: str) -> bool:
        """Snapshot sequence 0 as `session`'s state; False when it was too big to keep."""
        import llama_cpp

        n_tokens = self._llm.n_tokens
        if n_tokens <= 0 or not self.store.enabled:
            return False
        started = time.perf_counter()
        ctx = self._llm.ctx
        if not self.recurrent:
            # Cells past n_tokens (an aborted batch) are not part of the tokens we record: drop them first.
            self._llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        if not self.store.fits(size):
            self.stats.skipped_too_big += 1
            self.store.drop(session)
            return False
        buf = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0))
        if written <= 0 or written > size:
            raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        snapshot = KVSnapshot(tokens=self._llm.input_ids[:n_tokens].copy(), data=buf, size=written)
        self.store.put(session, snapshot)
        self.stats.saves += 1
        self.stats.last_save_bytes = snapshot.nbytes
        self.stats.save_seconds += time.perf_counter() - started
        return True

    def checkpoint(self, session: str | None, tokens: list[int], boundary: int, evaluate: Any) -> None:
        """Recurrent models: evaluate the prompt up to its history boundary and save the state there.

        `evaluate(tokens)` runs them through the model (llama-cpp-python's `Llama.eval`, so its own
        bookkeeping and the evaluated-token count stay right); `generate()` then finds this exact
        prefix cached and evaluates only the rest.
        """
        if not (self.recurrent and self.store.enabled and session is not None):
            return
        at = checkpoint_at(boundary, len(tokens), self._llm.n_tokens)
        if at is None:
            return
        evaluate(tokens[self._llm.n_tokens:at])
        try:
            if self.save(session):
                self.stats.checkpoints += 1
        except Exception:  # a failed copy costs only the reuse
            self.store.drop(session)

    def _restore(self, key: str) -> None:
        import llama_cpp

        best = self.store.get(key)
        assert best is not None
        started = time.perf_counter()
        if int(llama_cpp.llama_state_seq_set_data(self._llm.ctx, best.data, best.size, 0)) == 0:
            self.store.drop(key)
            raise RuntimeError("llama_state_seq_set_data refused the snapshot")
        n = len(best.tokens)
        # What Llama.load_state() does, minus the logits copy: generate() now matches the prompt
        # against these ids, keeps their common prefix and evaluates only the rest. _requires_eval
        # (llama-cpp-python >= 0.3.17) makes it re-evaluate one token rather than trust stale logits.
        self._llm.input_ids[:n] = best.tokens
        self._llm.n_tokens = n
        if hasattr(self._llm, "_requires_eval"):
            self._llm._requires_eval = True
        self.store.touch(key)
        self.stats.restores += 1
        self.stats.restore_seconds += time.perf_counter() - started

    def clear(self) -> None:
        self.store.clear()

