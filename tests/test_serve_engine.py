"""Continuous batching in process on a tiny model: slot decoding equals Generator.complete,
requests join and leave without recompiling, seeded sampling ignores its batch neighbours,
the queue bound, timeouts and cancellation."""

import numpy as np
import pytest

from sgv_jax.generation import prompts
from sgv_jax.serve.engine import Engine, SlotRequest
from sgv_jax.serve.scheduler import Event, Job, QueueFull, Scheduler
from tests.test_generate_helpers import tiny_generator

QUESTIONS = ["What is in the picture?", "Hello there! How are you today?",
             "Describe the image in detail.", "What colour is the car? Tell me more, please."]


@pytest.fixture(scope="module")
def gen():
    return tiny_generator()


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((21, 21, 3)).astype(np.float32)


def slot_request(gen, question, pixels, **sampling) -> SlotRequest:
    text = prompts.build_prompt("v1", question, pixels is not None)
    ids = prompts.encode_prompt(text, gen.tokenizer, gen.cfg.num_image_tokens,
                                pixels is not None, gen.cfg.image_token_id)
    return SlotRequest(ids, pixels, **sampling)


def run(scheduler, jobs_events, limit=500):
    for _ in range(limit):
        if all(e and e[-1].kind in ("done", "error") for e in jobs_events):
            return
        scheduler.run_once()
    raise AssertionError("jobs did not finish")


def make_job(request, max_tokens, **kw):
    events: list[Event] = []
    return Job(request, max_tokens, emit=events.append, **kw), events


def answer_of(events) -> str:
    return "".join(e.text for e in events if e.kind == "text")


def question_images():  # QUESTIONS' images: the 1st and 3rd have one
    return [image(0), None, image(1), None]


def run_questions_and_complete_them_alone(gen, scheduler, max_tokens=10):
    """QUESTIONS (with question_images) as greedy jobs through `scheduler` together; returns
    (job, its events, Generator.complete's reply for it alone) for each."""
    pixels = question_images()
    jobs = [make_job(slot_request(gen, q, p), max_tokens) for q, p in zip(QUESTIONS, pixels)]
    for job, _ in jobs:
        scheduler.submit(job)
    run(scheduler, [e for _, e in jobs])
    return [(job, events, gen.complete([prompts.build_prompt("v1", q, p is not None)], [p],
                                       max_new_tokens=max_tokens)[0])
            for (job, events), q, p in zip(jobs, QUESTIONS, pixels)]


@pytest.mark.slow
def test_slots_decode_what_generator_complete_decodes_and_never_recompile(gen):
    """Greedy answers of 4 prompts (two with images, different lengths) sharing 3 slots equal
    Generator.complete one by one; a second round with new sampling settings, seeds and
    lengths in the same bucket compiles nothing new."""
    engine = Engine(gen, slots=3)
    engine.warm_up()
    scheduler = Scheduler(engine, gen.tokenizer, gen.eos_ids, max_queue=8)
    for job, events, want in run_questions_and_complete_them_alone(gen, scheduler):
        assert answer_of(events) == want.text
        assert events[-1].completion_tokens == len(want.tokens)
        assert events[-1].prompt_tokens == len(job.request.ids)

    compiled = Engine.compiled_programs()
    again = [make_job(slot_request(gen, q + " Again?", p, temperature=0.5 * i, top_p=0.9,
                                   seed=i), 4 + i)
             for i, (q, p) in enumerate(zip(QUESTIONS, question_images()))]
    for job, _ in again:
        scheduler.submit(job)
    run(scheduler, [e for _, e in again])
    assert all(e[-1].kind == "done" for _, e in again)
    assert Engine.compiled_programs() == compiled


def test_a_step_over_the_first_rows_equals_the_all_slots_step_and_leaves_the_rest(gen):
    """One running request in slot 0 of 9 steps through the 1-row program (row buckets 1, 8, 9)
    and gives the token and cache row of the step over all 9 slots; the other slots' state
    (here a prompt in slot 8) is left bitwise as it was."""
    import jax

    from sgv_jax.serve.engine import decode_step

    assert Engine(gen, slots=9).row_buckets == [1, 8, 9]
    assert (Engine(gen, slots=1).row_buckets, Engine(gen, slots=8).row_buckets) == ([1], [1, 8])
    engines = [Engine(gen, slots=9) for _ in range(2)]
    for engine in engines:
        engine.prefill(0, slot_request(gen, QUESTIONS[0], image(0)))
        engine.prefill(8, slot_request(gen, QUESTIONS[1], None))
    before = jax.tree.map(np.asarray, engines[0].state)
    active = np.asarray([True] + [False] * 8)
    one_row = np.asarray(engines[0].step(active))  # the engine picks rows=1
    every, full = engines[1], None
    every.state, full = decode_step(every.params, every.state, active, rows=9,
                                    attend=every._attend(int(every.index[0]) + 1), **every.static)
    assert one_row.shape == (1,) and one_row[0] == np.asarray(full)[0]
    after, want = (jax.tree.map(np.asarray, e.state) for e in engines)
    for got, expected, old in zip(jax.tree.leaves(after), jax.tree.leaves(want),
                                  jax.tree.leaves(before)):
        np.testing.assert_allclose(got[:1], expected[:1], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(got[1:], old[1:])


@pytest.mark.slow
def test_seeded_sampling_does_not_depend_on_the_batch(gen):
    engine = Engine(gen, slots=4)
    scheduler = Scheduler(engine, gen.tokenizer, gen.eos_ids, max_queue=8)
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 1234}
    alone, alone_events = make_job(slot_request(gen, QUESTIONS[0], image(0), **sampled), 12,
                                   ignore_eos=True)
    scheduler.submit(alone)
    run(scheduler, [alone_events])
    crowd = [make_job(slot_request(gen, q, image(i), temperature=1.0, seed=i), 12)
             for i, q in enumerate(QUESTIONS[1:])]
    again, again_events = make_job(slot_request(gen, QUESTIONS[0], image(0), **sampled), 12,
                                   ignore_eos=True)
    for job, _ in crowd[:2]:
        scheduler.submit(job)
    scheduler.run_once(), scheduler.run_once()  # the twin joins a batch already decoding
    scheduler.submit(again)
    scheduler.submit(crowd[2][0])
    run(scheduler, [again_events] + [e for _, e in crowd])
    assert answer_of(again_events) == answer_of(alone_events)
    assert again_events[-1].completion_tokens == alone_events[-1].completion_tokens


@pytest.mark.slow
def test_one_prefill_per_step_queue_bound_timeout_and_cancel(gen):
    now = [0.0]
    engine = Engine(gen, slots=2)
    scheduler = Scheduler(engine, gen.tokenizer, gen.eos_ids, max_queue=3, clock=lambda: now[0])
    request = slot_request(gen, QUESTIONS[1], None)
    first, first_events = make_job(request, 50, ignore_eos=True)
    second, _ = make_job(request, 50, ignore_eos=True)
    third, third_events = make_job(request, 50, ignore_eos=True, deadline=5.0)
    for job in (first, second, third):
        scheduler.submit(job)
    with pytest.raises(QueueFull, match="queue is full"):
        scheduler.submit(make_job(request, 5)[0])
    assert scheduler.counts["rejected"] == 1

    # The host reads a step's tokens while the device runs the next, one iteration behind.
    scheduler.run_once()  # first starts: its prefill and one step queued, nothing read yet
    assert list(scheduler.running.values()) == [first] and first.generated == 0
    scheduler.run_once()  # second starts; first gets its prefill's token and the step's
    assert first.generated == 2 and second.generated == 0
    scheduler.run_once()  # no free slot: third waits; first gets exactly one more token
    assert (first.generated, second.generated, len(scheduler.waiting)) == (3, 2, 1)
    scheduler.run_once()  # both running advance by one
    assert (first.generated, second.generated) == (4, 3)

    now[0] = 6.0  # third's deadline passes while it waits
    scheduler.run_once()
    assert third_events[-1].kind == "error" and third_events[-1].status == 504
    scheduler.cancel(first)  # its client went away
    scheduler.run_once()
    assert list(scheduler.running.values()) == [second]
    assert first_events == [] or first_events[-1].kind == "text"  # no done for a vanished client
    assert (scheduler.counts["cancelled"], scheduler.counts["timed_out"]) == (1, 1)


@pytest.mark.slow
def test_slots_split_over_two_devices_decode_what_one_engine_decodes(gen):
    """An EngineGroup over two of the host's (simulated) CPU devices: 3 slots in blocks
    (slots 0-1 on the first device, slot 2 on the second), 4 greedy prompts through one
    scheduler (new requests to the least busy device) give Generator.complete's answers; each
    engine's slots live on its own device; more devices than slots is refused."""
    import jax

    from sgv_jax.serve.engine_group import EngineGroup

    devices = jax.local_devices()[:2]
    group = EngineGroup(gen, slots=3, devices=devices)
    assert [e.slots for e in group.engines] == [2, 1]
    # Below `concentrate` running requests the first device takes them; then the least busy.
    assert (group.choose_slot([0, 1, 2]), group.choose_slot([1, 2])) == (0, 1)
    group.concentrate = 1
    assert (group.choose_slot([0, 1, 2]), group.choose_slot([1, 2])) == (0, 2)
    assert [e.state["token"].devices() for e in group.engines] == [{d} for d in devices]
    scheduler = Scheduler(group, gen.tokenizer, gen.eos_ids, max_queue=8)  # compiles lazily
    for _, events, want in run_questions_and_complete_them_alone(gen, scheduler):
        assert answer_of(events) == want.text
    assert all(e.index.max() > 0 for e in group.engines)  # both devices decoded
    with pytest.raises(ValueError, match="3 devices for 2 slots"):
        EngineGroup(gen, slots=2, devices=jax.local_devices()[:3])


def test_a_bf16_engine_steps_with_bf16_dots_and_writes_its_cache_in_place():
    """bf16 serving steps compile with YNNPACK's bf16 dots (xla_cpu.decode_step_options), one row
    included (nn.matmul_f32 pads it to two), and no fp32 or bf16 copy of a cache block: the
    blocks hold uint16 bits, written in place. Before, every step converted each weight to fp32
    and rewrote each block it wrote as fp32 and back (a 32-row step of bench_generate.py's model
    108.6 -> 52.8 ms)."""
    import re

    from sgv_jax.serve.engine import decode_step

    gen = tiny_generator(dtype="bfloat16")
    engine = Engine(gen, slots=9)
    block = engine.state["cache"]["k"][0][0]
    assert block.dtype == np.uint16
    shape = ",".join(map(str, block.shape))
    for rows in engine.row_buckets:
        text = decode_step.lower(engine.params, engine.state, np.ones(rows, bool), rows=rows,
                                 attend=engine.block, **engine.static).compile().as_text()
        entry = text[text.index("\nENTRY"):]  # the program's buffers, not fusions' insides
        writes = re.findall(rf"%\S*(?:dynamic-update-slice|scatter)\S* = (\w+)\[{shape}\]", entry)
        assert writes and set(writes) == {"u16"}
        assert "__ynn_fusion" in text
        assert not re.findall(r"= f32\[\d+,\d+\]\S* fusion\(%params", entry)  # weight upcasts
