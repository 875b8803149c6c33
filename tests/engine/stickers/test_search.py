"""The encoder's search plans and their driver: running candidates ahead on idle lanes changes what
a search waits for, never what it finds (engine/stickers/search.py, engine/stickers/lanes.py)."""
import threading
import time

import pytest

from engine.stickers import codecs
from engine.stickers.encode import encode
from engine.stickers.lanes import SpareLanes
from engine.stickers.search import first_fit_plan, ladder_plan, next_key, reachable, run_plan

from tests.engine.stickers.content import cartoon, portrait


@pytest.fixture
def lanes():
    made = []

    def make(n):
        made.append(SpareLanes(n))
        return made[-1]
    yield make
    for lane_set in made:
        lane_set.close()


def _ladder(fits_from_level: list[int], budget=60):
    """A ladder plan over len(fits_from_level) levels of 40 knobs; level i fits from knob fits_from_level[i]."""
    def make():
        return ladder_plan(len(fits_from_level), 40, 6, 4, True, budget)

    def fits(key):
        level, knob = key
        return knob >= fits_from_level[level]
    return make, fits


def _serial(make, fits):
    plan, tried = make(), []
    try:
        key = next(plan)
        while True:
            tried.append(key)
            key = plan.send(fits(key))
    except StopIteration as end:
        return end.value, tried


@pytest.mark.parametrize("levels", [[0], [3], [9], [39], [99, 99, 30, 12, 5], [99, 99, 99, 99], [99, 7, 0]])
def test_running_ahead_on_lanes_asks_the_same_candidates_and_chooses_the_same(levels, lanes):
    make, fits = _ladder(levels)
    chosen, tried = _serial(make, fits)
    asked = []

    def try_key(key, stop):
        asked.append(key)
        time.sleep(0.01)  # an encode: long enough for the lanes to start the next ones meanwhile
        return fits(key)

    lane_set = lanes(4)
    with lane_set.hold():  # the search's own lane, as encode() holds it
        run = run_plan(make, try_key, bool, lane_set)
    assert run.chosen == chosen
    assert [k for k in run.outcomes] == list(dict.fromkeys(tried)) and len(run.used) == len(tried)
    assert run.rounds <= len(tried) and len(set(asked)) == len(run.outcomes) + run.spare
    if len(tried) >= 4:  # a bisection: its candidates ran two at a time or more
        assert run.rounds <= (len(tried) + 1) // 2 + 1, (run.rounds, tried)


def test_without_lanes_every_candidate_is_one_round_and_none_is_spare():
    make, fits = _ladder([9])
    chosen, tried = _serial(make, fits)
    run = run_plan(make, lambda key, stop: fits(key), bool)
    assert run.chosen == chosen and run.rounds == len(tried) == len(run.used) and run.spare == 0


def test_the_plan_replays_and_its_reachable_candidates_come_in_the_order_they_may_be_needed():
    make, _ = _ladder([9])
    assert next_key(make, []) == (0, 0) and next_key(make, [False]) == (0, 6)
    assert next_key(make, [True]) is None  # the best knob fitted: done
    order, complete = reachable(make, [False], {})
    assert complete and order[:3] == [(0, 6), (0, 3), (0, 39)]  # 6, then what follows it fitting or not
    known_order, _ = reachable(make, [False], {(0, 6): False})
    assert (0, 3) not in known_order and known_order[:2] == [(0, 6), (0, 39)]


def test_a_budget_stops_the_plan_where_the_serial_search_stopped():
    make, fits = _ladder([99, 99, 99, 30], budget=4)
    assert _serial(make, fits) == ((3, 39), [(0, 0), (0, 6), (0, 39), (3, 39)])  # no refining past the budget
    make, fits = _ladder([99, 99, 99, 30], budget=3)
    assert _serial(make, fits) == (None, [(0, 0), (0, 6), (0, 39)])
    assert _serial(lambda: first_fit_plan(10, 3), lambda i: i >= 5) == (None, [0, 1, 2])
    assert _serial(lambda: first_fit_plan(10, 60), lambda i: i >= 5) == (5, [0, 1, 2, 3, 4, 5])


def test_candidates_no_longer_needed_are_told_to_stop_and_their_lanes_come_back(lanes):
    stopped = []

    def try_key(i, stop):
        if i == 0:
            time.sleep(0.05)  # the speculative ones have started by now
            return True
        while not stop():
            time.sleep(0.001)
        stopped.append(i)
        raise codecs.Abandoned

    lane_set = lanes(3)
    with lane_set.hold():  # the search's own lane, as encode() holds it: two are left to lend
        run = run_plan(lambda: first_fit_plan(5, 60), try_key, bool, lane_set)
    assert run.chosen == 0 and run.rounds == 1 and run.spare == 2
    deadline = time.monotonic() + 5
    while lane_set.free() < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert lane_set.free() == 3 and sorted(stopped) == [1, 2]  # stopped, and their lanes came back


def test_a_lent_lane_is_given_back_as_soon_as_another_encode_waits_for_one(lanes):
    lane_set = lanes(2)
    lent_stopped = threading.Event()
    second_got_a_lane = threading.Event()

    def try_key(i, stop):
        if i == 0:
            threading.Thread(target=other_encode).start()  # another file's encode wants a lane now
            assert second_got_a_lane.wait(5), "the lent lane was not given back"
            return False
        done_at = time.monotonic() + 0.3  # an encode of 0.3 s, unless it is stopped first
        while time.monotonic() < done_at:
            if stop():
                lent_stopped.set()
                raise codecs.Abandoned
            time.sleep(0.001)
        return False

    def other_encode():
        with lane_set.hold():
            second_got_a_lane.set()

    with lane_set.hold():
        run = run_plan(lambda: first_fit_plan(2, 60), try_key, bool, lane_set)
    assert lent_stopped.is_set() and run.used == [False, False] and run.rounds == 2  # 1 encoded again, here


def test_an_error_counts_only_when_the_plan_asks_for_its_candidate(lanes):
    def try_key(i, stop):
        time.sleep(0.02)
        if i == 2:
            raise RuntimeError("candidate 2 broke")
        return i >= 1

    assert run_plan(lambda: first_fit_plan(4, 60), try_key, bool, lanes(4)).chosen == 1  # 2 ran ahead, never asked
    with pytest.raises(RuntimeError, match="candidate 2 broke"):
        run_plan(lambda: first_fit_plan(4, 60), lambda i, stop: try_key(i, stop) and i >= 3, bool, lanes(4))


def test_lanes_refuse_nonsense_and_lend_none_while_all_are_held(lanes):
    with pytest.raises(ValueError, match="encode lanes must be >= 1"):
        SpareLanes(0)
    lane_set = lanes(1)
    with lane_set.hold():
        assert lane_set.start(time.sleep, 0) is None
    assert lane_set.start(time.sleep, 0).result() is None


def test_writers_stop_when_told_and_only_then():
    frames = cartoon(8, 64, 64)
    calls = []

    def stop_at_third_frame():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(codecs.Abandoned):
        codecs.write_webm_vp9(frames, 15, 30, stop=stop_at_third_frame)
    assert len(calls) == 4
    assert codecs.write_webm_vp9(frames, 15, 30, stop=lambda: False) == codecs.write_webm_vp9(frames, 15, 30)
    with pytest.raises(codecs.Abandoned):
        codecs.write_apng(frames, 15, stop=lambda: True)
    with pytest.raises(codecs.Abandoned):
        codecs.write_webp(frames, 15, quality=50, stop=lambda: True)


@pytest.mark.parametrize("target", ["telegram_video", "discord_sticker", "preview"])
def test_a_photographed_head_on_idle_lanes_gets_the_serial_file_in_fewer_rounds(target, lanes):
    """The search on a real head's texture takes several candidates (4-5 here, one after another);
    on idle lanes it waits for at most about half of them in a row, with the same file and tries."""
    frames = portrait(30, 256, 256) if target != "telegram_video" else portrait(30, 512, 512)
    serial = encode(frames, 15, target)
    ahead = encode(frames, 15, target, lanes=lanes(3))
    tries = [a.settings for a in serial.report.attempts]
    assert ahead.data == serial.data and [a.settings for a in ahead.report.attempts] == tries
    assert serial.report.rounds == len(tries) >= 3 and serial.report.spare_tries == 0
    assert ahead.report.rounds <= (len(tries) + 1) // 2, (ahead.report.rounds, tries)


def test_many_encodes_sharing_few_lanes_give_the_serial_files(lanes):
    """Six files at once on three lanes (held, lent, stopped and taken back as the encodes come and
    go): no encode waits forever, and each file and its tries are the serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(portrait(8, 96, 96, degrees=4.0 + i), target) for i in range(3)
            for target in ("telegram_video", "discord_sticker")]
    serial = [encode(frames, 15, target) for frames, target in jobs]
    lane_set = lanes(3)
    with ThreadPoolExecutor(6) as pool:
        shared = list(pool.map(lambda job: encode(job[0], 15, job[1], lanes=lane_set), jobs, timeout=300))
    for a, b in zip(serial, shared):
        assert a.data == b.data and [t.settings for t in a.report.attempts] == [t.settings for t in b.report.attempts]
    deadline = time.monotonic() + 5
    while lane_set.free() < 3 and time.monotonic() < deadline:  # work told to stop ends at its next frame
        time.sleep(0.01)
    assert lane_set.free() == 3  # every lane came back
