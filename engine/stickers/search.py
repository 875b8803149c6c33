"""The encoder's searches as plans, and the driver that runs a plan, ahead of itself where lanes are idle.

A *plan* is a generator that yields the candidate it needs next (a hashable
key, e.g. ``(level, knob)``), is sent whether that candidate fitted, and
returns the key it chose (None: nothing fitted). It encodes nothing, so it can
be replayed: a plan is a deterministic function of the outcomes it was sent.

:func:`run_plan` asks the plan for a candidate, encodes it, and sends back
whether it fitted, until the plan returns. Given idle encode lanes
(:class:`engine.stickers.lanes.SpareLanes`), it also starts the candidates the
plan may ask for next, in the order they may be needed (breadth first over
both outcomes of each candidate not yet known), by replaying the plan under
the outcomes it assumes. A bisection then waits for about half as many
encodes one after another. The plan still sees only the outcomes of the
candidates it asked for, in its own order, so the chosen candidate, the tries
a report lists and the file are those of the serial search. A speculative
candidate the plan can no longer ask for is told to stop (between frames);
one the plan never asked for is counted as a spare try.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generator, Generic, Hashable, Sequence, TypeVar

from engine.stickers.codecs import Abandoned
from engine.stickers.lanes import SpareLanes

Key = Hashable
Plan = Generator[Key, bool, "Key | None"]
T = TypeVar("T")

# Speculative candidates one search keeps running at once: two levels of a bisection's tree below
# the candidate it waits for, enough to halve its encodes in a row; more would mostly be discarded.
MAX_AHEAD = 6
# Hypothetical paths replayed per look ahead (a replay costs microseconds; encodes cost 0.1-1 s).
MAX_PATHS = 256


def ladder_plan(n_levels: int, n_knobs: int, start: int, refine_steps: int, best_first: bool,
                budget: int) -> Plan:
    """Find the first level that can fit, then the best knob there; keys are ``(level, knob)``.

    Knobs go from best (0) to worst quality. Assumes, as a heuristic for speed only (every
    returned file is verified), that size falls along the knobs and along the levels. Level 0 is
    tried at ``start`` (after knob 0 with ``best_first``), then at its worst knob; if neither
    fits, the first level that fits at the worst knob is bisected for; finally the knob is bisected
    toward better quality there (``refine_steps``). ``budget``: the most candidates to ask for, as
    checked at the points where the search may stop early."""
    asked = 0
    worst = n_knobs - 1

    def left() -> bool:
        return asked < budget

    def ask(level: int, knob: int):
        nonlocal asked
        fits = yield (level, knob)
        asked += 1
        return fits

    def best_knob(level: int, lo: int, hi: int, lo_first: bool = True):
        # knob ``hi`` fits; bisect [lo, hi) for a better one that fits too
        best = hi
        if lo_first and lo < hi and left():  # typical content fits at the best knob: one try settles it
            if (yield from ask(level, lo)):
                return level, lo
            lo += 1
        for _ in range(refine_steps):
            if lo >= best or not left():
                break
            mid = (lo + best) // 2
            if (yield from ask(level, mid)):
                best = mid
            else:
                lo = mid + 1
        return level, best

    best_tried = best_first and start > 0
    if best_tried and (yield from ask(0, 0)):
        return 0, 0
    if (yield from ask(0, start)):  # knob 0, when tried first, did not fit: bisect from the next one
        if best_tried:
            return (yield from best_knob(0, 1, start, lo_first=False))
        return (yield from best_knob(0, 0, start))
    if start < worst and (yield from ask(0, worst)):
        return (yield from best_knob(0, start + 1, worst))
    if n_levels == 1 or not left():
        return None
    lo, hi = 1, n_levels - 1
    if not (yield from ask(hi, worst)):
        return None
    best_level = hi
    hi -= 1
    while lo <= hi and left():
        mid = (lo + hi) // 2
        if (yield from ask(mid, worst)):
            best_level, hi = mid, mid - 1
        else:
            lo = mid + 1
    return (yield from best_knob(best_level, 0, worst))


def first_fit_plan(n: int, budget: int) -> Plan:
    """Candidates ``0 .. n - 1`` in order; the first that fits (at most ``budget`` asked)."""
    for i in range(min(n, budget)):
        if (yield i):
            return i
    return None


def next_key(make_plan: Callable[[], Plan], outcomes: Sequence[bool]) -> Key | None:
    """The candidate a fresh plan asks for after ``outcomes``; None when it has returned by then."""
    plan = make_plan()
    try:
        key = next(plan)
        for fits in outcomes:
            key = plan.send(fits)
    except StopIteration:
        return None
    finally:
        plan.close()
    return key


def reachable(make_plan: Callable[[], Plan], history: Sequence[bool], known: dict[Key, bool],
              max_paths: int = MAX_PATHS) -> tuple[list[Key], bool]:
    """The candidates the plan may still ask for after ``history``, in the order they may be needed
    (breadth first; a candidate in ``known`` follows its known outcome, any other branches both
    ways), and whether that list is complete (False: cut at ``max_paths`` replays)."""
    order: list[Key] = []
    seen: set[Key] = set()
    paths = deque([list(history)])
    replays = 0
    while paths:
        if replays == max_paths:
            return order, False
        path = paths.popleft()
        replays += 1
        key = next_key(make_plan, path)
        if key is None:
            continue
        if key not in seen:
            seen.add(key)
            order.append(key)
        if key in known:
            paths.append(path + [known[key]])
        else:
            paths.append(path + [True])
            paths.append(path + [False])
    return order, True


@dataclass
class PlanRun(Generic[T]):
    chosen: Key | None   # what the plan returned
    outcomes: dict       # key -> outcome of every candidate the plan asked for
    used: list           # those outcomes in the plan's order (a candidate asked twice appears twice)
    rounds: int = 0      # encodes the search started itself and waited for: len(used) without lanes
    spare: int = 0       # speculative encodes the plan never asked for (stopped or discarded)


def _never() -> bool:
    return False


def run_plan(make_plan: Callable[[], Plan], try_key: Callable[[Key, Callable[[], bool]], T],
             fits: Callable[[T], bool], lanes: SpareLanes | None = None,
             stop: Callable[[], bool] | None = None) -> PlanRun[T]:
    """Run a plan: ``try_key(key, stop)`` encodes a candidate (raising :class:`Abandoned` when
    ``stop()`` turns true), ``fits(outcome)`` says whether it fitted. ``lanes``: idle lanes to run
    candidates ahead on (None: one after another). An exception from a candidate the plan asked for
    propagates, as in the serial search; one from a speculative candidate never asked for does not.
    ``stop``: the caller no longer needs the file (a cancelled pack); every candidate, its own and
    those run ahead, is told so, and :class:`Abandoned` propagates from the next frame written, or
    before the next candidate (a still's, which writes no frames, is never stopped midway)."""
    stop = stop or _never
    run: PlanRun[T] = PlanRun(None, {}, [])
    done: dict[Key, T] = {}
    running: dict[Key, tuple[Future, threading.Event]] = {}
    speculated: set[Key] = set()
    history: list[bool] = []
    plan = make_plan()
    try:
        key = next(plan)
        while True:
            if lanes is not None:
                _settle(running, done)
                _look_ahead(make_plan, history, key, done, running, speculated, try_key, fits, lanes, stop)
            if stop():
                raise Abandoned("the file is no longer needed")
            out = _obtain(key, done, running, try_key, run, stop)
            done[key] = run.outcomes[key] = out
            run.used.append(out)
            history.append(fits(out))
            key = plan.send(history[-1])
    except StopIteration as end:
        run.chosen = end.value
    finally:
        plan.close()
        for _future, unwanted in running.values():
            unwanted.set()
        run.spare = len(speculated - run.outcomes.keys())
    return run


def _settle(running: dict, done: dict) -> None:
    """Move speculative candidates that finished into ``done`` (a stopped or failed one is dropped:
    if the plan asks for it, it is encoded again, and a failure then propagates)."""
    for key, (future, _unwanted) in list(running.items()):
        if future.done():
            del running[key]
            if not future.cancelled() and future.exception() is None:
                done[key] = future.result()


def _look_ahead(make_plan, history, current, done, running, speculated, try_key, fits, lanes: SpareLanes,
                stop: Callable[[], bool]) -> None:
    order, complete = reachable(make_plan, history, {k: fits(v) for k, v in done.items()})
    if complete:  # stop what the plan can no longer ask for
        wanted = set(order)
        for key in [k for k in running if k not in wanted]:
            running.pop(key)[1].set()
    for key in order:
        if len(running) >= MAX_AHEAD:
            break
        if key == current or key in done or key in running:
            continue
        unwanted = threading.Event()
        future = lanes.start(try_key, key, lambda unwanted=unwanted: unwanted.is_set() or lanes.wanted() or stop())
        if future is None:
            break
        running[key] = (future, unwanted)
        speculated.add(key)


def _obtain(key, done, running, try_key, run: PlanRun, stop: Callable[[], bool]):
    if key in done:
        return done[key]
    if key in running:
        future, _unwanted = running.pop(key)
        try:
            return future.result()
        except Abandoned:  # stopped for another file's encode: encode it here after all (or stopped for good)
            pass
    run.rounds += 1
    return try_key(key, stop)
