"""GPU slot assignment (pure functions) and lock-file GPU claims (with real processes)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from conftest import python_env
from hpsearch import slots
from hpsearch.errors import ConfigError, DeviceError
from hpsearch.slots import Slot, assign_slots, claim_gpu, cuda_visible_devices, parse_gpus, visible_gpus

REPO = Path(__file__).resolve().parents[1]


def gpus_of(result: list[Slot]) -> list[int | None]:
    return [slot.gpu for slot in result]


# --------------------------------------------------------------------------- parse_gpus

@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "all"),
        ("all", "all"),
        (" ALL ", "all"),
        ("none", "none"),
        ("0", [0]),
        ("0,1,3", [0, 1, 3]),
        (" 3, 1 ", [3, 1]),  # the order given is kept
        ("0,1,", [0, 1]),
        ([0, 1], [0, 1]),
        ((2,), [2]),
        (1, [1]),
    ],
)
def test_parse_gpus_normalises(given: object, expected: object) -> None:
    assert parse_gpus(given) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "names no GPU"),
        (" , ", "names no GPU"),
        ("gpu0", "'gpu0' is not a GPU index"),
        ("0,x", "'x' is not a GPU index"),
        ("-1", "'-1' is not a GPU index"),
        ("1.5", "'1.5' is not a GPU index"),
        ("cuda:0", "'cuda:0' is not a GPU index"),
        ("0,1,0", "GPU 0 is listed twice"),
        ([1, 1], "GPU 1 is listed twice"),
        ([0, -1], "-1 is not a GPU index"),
        ([0, "1"], "'1' is not a GPU index"),
        ([], "the GPU list is empty"),
        (True, "is not a GPU list"),
        (2.0, "is not a GPU list"),
    ],
)
def test_parse_gpus_rejects_with_one_line_naming_the_flag(given: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_gpus(given)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("--gpus")
    assert fragment in message
    assert "\n" not in message
    assert "use all, none" in message or "list each GPU once" in message


# --------------------------------------------------------------------------- assign_slots

def test_no_gpu_gives_cpu_slots() -> None:
    assert assign_slots([], "all", 1, None) == [Slot(0, None)]
    assert gpus_of(assign_slots([], "all", 3, 4)) == [None] * 4  # trials_per_gpu means nothing on the CPU
    assert assign_slots([], "none", 1, 2) == [Slot(0, None), Slot(1, None)]


def test_none_uses_the_cpu_even_with_gpus() -> None:
    assert gpus_of(assign_slots([0, 1], "none", 2, None)) == [None]
    assert gpus_of(assign_slots(list(range(8)), "none", 1, 3)) == [None, None, None]


def test_one_gpu() -> None:
    assert assign_slots([0], "all", 1, None) == [Slot(0, 0)]
    assert gpus_of(assign_slots([0], "all", 3, None)) == [0, 0, 0]
    assert gpus_of(assign_slots([0], [0], 2, None)) == [0, 0]
    assert gpus_of(assign_slots([0], "all", 1, 3)) == [0, 0, 0]


@pytest.mark.parametrize(
    ("trials_per_gpu", "expected"),
    [(1, [0, 1]), (2, [0, 1, 0, 1]), (3, [0, 1, 0, 1, 0, 1])],
)
def test_two_gpus_spread_before_stacking(trials_per_gpu: int, expected: list[int]) -> None:
    result = assign_slots([0, 1], "all", trials_per_gpu, None)
    assert gpus_of(result) == expected
    assert [slot.index for slot in result] == list(range(len(expected)))


def test_workers_fewer_than_slots_takes_the_spread_prefix() -> None:
    assert gpus_of(assign_slots([0, 1], "all", 3, 1)) == [0]
    assert gpus_of(assign_slots([0, 1], "all", 3, 3)) == [0, 1, 0]
    assert gpus_of(assign_slots(list(range(8)), "all", 2, 3)) == [0, 1, 2]


def test_workers_more_than_slots_keeps_cycling() -> None:
    result = assign_slots([0, 1], "all", 1, 5)
    assert gpus_of(result) == [0, 1, 0, 1, 0]
    assert Counter(gpus_of(result)) == {0: 3, 1: 2}
    assert [slot.index for slot in result] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("trials_per_gpu", [1, 2, 3])
def test_eight_gpus(trials_per_gpu: int) -> None:
    result = assign_slots(list(range(8)), "all", trials_per_gpu, None)
    assert len(result) == 8 * trials_per_gpu
    assert Counter(gpus_of(result)) == {gpu: trials_per_gpu for gpu in range(8)}
    assert gpus_of(result)[:8] == list(range(8))  # the first eight workers use all eight GPUs
    assert len({slot.label for slot in result}) == len(result)


def test_uneven_explicit_list() -> None:
    assert gpus_of(assign_slots([0, 1, 2, 3], [1, 3], 1, None)) == [1, 3]
    assert gpus_of(assign_slots([0, 1, 2, 3], [1, 3], 3, None)) == [1, 3, 1, 3, 1, 3]
    assert gpus_of(assign_slots([0, 1, 2, 3], [1, 3], 2, 3)) == [1, 3, 1]
    assert gpus_of(assign_slots([0, 1, 2, 3], [3, 1], 1, None)) == [3, 1]


def test_explicit_gpu_that_is_not_visible() -> None:
    with pytest.raises(DeviceError) as info:
        assign_slots([0, 1], [0, 3], 1, None)
    assert str(info.value) == "--gpus 0,3: GPU 3 is not visible (visible: 0, 1); pick from those or use --gpus all"
    with pytest.raises(DeviceError, match=r"^--gpus 2,3: GPUs 2, 3 are not visible \(visible: 0, 1\)"):
        assign_slots([0, 1], [2, 3], 1, None)


def test_explicit_gpu_without_any_gpu() -> None:
    with pytest.raises(DeviceError) as info:
        assign_slots([], [0], 1, None)
    message = str(info.value)
    assert message.startswith("--gpus 0: no CUDA GPU is visible")
    assert "--gpus none" in message and "\n" not in message


def test_explicit_list_is_validated_by_assign_slots_too() -> None:
    with pytest.raises(ConfigError, match="GPU 0 is listed twice"):
        assign_slots([0, 1], [0, 0], 1, None)
    with pytest.raises(ConfigError, match="is not a GPU index"):
        assign_slots([0, 1], "0,a", 1, None)  # type: ignore[arg-type]
    assert gpus_of(assign_slots([0, 1, 2], "2,0", 1, None)) == [2, 0]  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_counts(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^workers\.trials_per_gpu: must be a positive integer"):
        assign_slots([0], "all", bad, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^--workers: must be a positive integer"):
        assign_slots([0], "all", 1, bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Slot env and label

def test_slot_env_and_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert Slot(1, 0).env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert Slot(3, 1).label == "gpu1#3"
    assert Slot(2, None).env == {"CUDA_VISIBLE_DEVICES": ""}  # a CPU worker sees no GPU at all
    assert Slot(2, None).label == "cpu#2"


def test_slot_env_maps_through_the_parents_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parent runs on physical GPUs 2 and 3; torch calls them 0 and 1, the child must get "3" for 1.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in assign_slots([0, 1], "all", 1, None)] == ["2", "3"]
    assert Slot(0, None).env == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("gpu", "parent", "expected"),
    [
        (0, None, "0"),
        (5, "", "5"),
        (1, "4, 6", "6"),
        (0, "GPU-8a1b,GPU-77ff", "GPU-8a1b"),
        (1, "MIG-abc,MIG-def", "MIG-def"),
        (None, "0,1", ""),
    ],
)
def test_cuda_visible_devices(gpu: int | None, parent: str | None, expected: str) -> None:
    assert cuda_visible_devices(gpu, parent) == expected


# --------------------------------------------------------------------------- visible_gpus

def test_visible_gpus_on_this_machine_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    assert visible_gpus() == list(range(torch.cuda.device_count()))


def test_visible_gpus_counts_and_survives_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from hpsearch import slots

    monkeypatch.setattr(slots, "_driver_present", lambda: True)
    monkeypatch.setattr(slots, "_nvml_count", lambda: None)  # NVML unavailable: torch is asked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_gpus() == [0, 1, 2]

    def broken() -> int:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "device_count", broken)
    assert visible_gpus() == []


def test_visible_gpus_from_nvml_honour_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch import slots

    monkeypatch.setattr(slots, "_driver_present", lambda: True)
    monkeypatch.setattr(slots, "_nvml_count", lambda: 4)
    for value, expected in [(None, 4), ("", 0), ("2", 1), ("0,3", 2), ("1,9,2", 1), ("-1", 0), ("3,3", 1)]:
        if value is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == list(range(expected)), value
    assert slots._visible_count("GPU-8f2a,GPU-77c1", 4) is None  # UUIDs: only CUDA can map them, torch is asked


def test_no_driver_no_gpu_and_no_torch_import() -> None:
    out = _python("import sys; from hpsearch import slots; slots._driver_present = lambda: False; "
                  "print(slots.visible_gpus(), 'torch' in sys.modules)")
    assert out.stdout.strip() == "[] False"


def _python(code: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = python_env()
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True, **kwargs)  # type: ignore[call-overload]


def test_slots_imports_without_torch() -> None:
    out = _python("import sys; import hpsearch.slots; print('torch' in sys.modules)")
    assert out.stdout.strip() == "False"
    # Where torch is not installed at all, visible_gpus() says "no GPU" instead of failing.
    out = _python("import sys; sys.modules['torch'] = None; from hpsearch.slots import visible_gpus, assign_slots; "
                  "print(visible_gpus(), assign_slots(visible_gpus(), 'all', 1, None))")
    assert out.stdout.strip() == "[] [Slot(index=0, gpu=None)]"


# --------------------------------------------------------------------------- claim_gpu in one process

def test_claims_take_free_gpus_in_order(tmp_path: Path) -> None:
    lock_dir = tmp_path / "nested" / "claims"
    first = claim_gpu(lock_dir, [0, 1])
    second = claim_gpu(lock_dir, [0, 1])
    try:
        assert (first.gpu, second.gpu) == (0, 1)
        assert first.path == lock_dir / "gpu0.lock" and second.path == lock_dir / "gpu1.lock"
        assert f"pid {os.getpid()}" in first.path.read_text()
        with pytest.raises(DeviceError) as info:
            claim_gpu(lock_dir, [0, 1])
        assert str(info.value) == (
            f"all 2 GPUs in {lock_dir} are claimed by other workers; run fewer workers or add GPUs"
        )
        first.release()
        first.release()  # idempotent
        assert not first.held and second.held
        with claim_gpu(lock_dir, [0, 1]) as again:
            assert again.gpu == 0
            assert again.held
        assert not again.held
    finally:
        first.release()
        second.release()


def test_claim_env_pins_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with claim_gpu(tmp_path, [3]) as claim:
        assert claim.env == {"CUDA_VISIBLE_DEVICES": "3"}
        with pytest.raises(DeviceError, match=r"^the only GPU in .* is claimed by other workers"):
            claim_gpu(tmp_path, [3])


def test_claim_trials_per_gpu_gives_spread_slots(tmp_path: Path) -> None:
    claims = [claim_gpu(tmp_path, [0, 1], trials_per_gpu=2) for _ in range(4)]
    try:
        assert [claim.gpu for claim in claims] == [0, 1, 0, 1]
        assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu0.1.lock", "gpu0.lock", "gpu1.1.lock", "gpu1.lock"]
        with pytest.raises(DeviceError, match=r"^all 4 GPU slots \(2 GPUs x 2\) in .* are claimed"):
            claim_gpu(tmp_path, [0, 1], trials_per_gpu=2)
    finally:
        for claim in claims:
            claim.release()


def test_claim_waits_for_a_gpu_to_free_up(tmp_path: Path) -> None:
    held = [claim_gpu(tmp_path, [0, 1]) for _ in range(2)]
    timer = threading.Timer(0.3, held[1].release)
    timer.start()
    try:
        started = time.monotonic()
        with claim_gpu(tmp_path, [0, 1], wait_s=20) as claim:
            assert claim.gpu == 1
        assert time.monotonic() - started < 10
    finally:
        timer.join()
        for claim in held:
            claim.release()


def test_claim_gives_up_after_waiting(tmp_path: Path) -> None:
    with claim_gpu(tmp_path, [0]):
        started = time.monotonic()
        with pytest.raises(DeviceError, match=r"claimed by other workers \(waited 0\.3s\); run fewer workers"):
            claim_gpu(tmp_path, [0], wait_s=0.3)
        assert time.monotonic() - started >= 0.3


def test_claim_without_gpus_or_folder(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"^--gpu-claim .*: no CUDA GPU is visible to claim"):
        claim_gpu(tmp_path, [])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DeviceError, match=r"^--gpu-claim .*file/claims: cannot create the lock folder"):
        claim_gpu(blocker / "claims", [0])


# --------------------------------------------------------------------------- claim_gpu across processes

HOLDER = """
import sys
from hpsearch.errors import DeviceError
from hpsearch.slots import claim_gpu
try:
    claim = claim_gpu(sys.argv[1], [0, 1])
except DeviceError as exc:
    print("error", exc, flush=True)
    sys.exit(2)
print("gpu", claim.gpu, flush=True)
sys.stdin.read()  # hold the GPU until stdin closes or the process is killed
"""


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _start_holder(lock_dir: Path, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    env = python_env()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    started.append(proc)
    return proc


def _first_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the claiming process printed nothing in time"
    return proc.stdout.readline().strip()


def test_three_processes_two_gpus_then_kill_frees_a_gpu(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    procs = [_start_holder(tmp_path, holders) for _ in range(3)]  # all three race for the two GPUs
    lines = {proc.pid: _first_line(proc) for proc in procs}
    winners = {pid: line for pid, line in lines.items() if line.startswith("gpu ")}
    losers = [pid for pid, line in lines.items() if line.startswith("error ")]
    assert sorted(winners.values()) == ["gpu 0", "gpu 1"], lines
    assert len(losers) == 1
    assert lines[losers[0]] == f"error all 2 GPUs in {tmp_path} are claimed by other workers; run fewer workers or add GPUs"
    loser = next(proc for proc in procs if proc.pid == losers[0])
    assert loser.wait(timeout=30) == 2

    # SIGKILL gives the holder no chance to clean up; the kernel still drops its flock.
    victim = next(proc for proc in procs if proc.pid in winners)
    freed = int(winners[victim.pid].split()[1])
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert (tmp_path / f"gpu{freed}.lock").exists()  # the file stays; only the lock went away
    newcomer = _start_holder(tmp_path, holders)
    assert _first_line(newcomer) == f"gpu {freed}"
    # The other holder still has its GPU.
    with pytest.raises(DeviceError):
        claim_gpu(tmp_path, [0, 1])


def test_a_clean_exit_releases_too(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    first = _start_holder(tmp_path, holders)
    assert _first_line(first) == "gpu 0"
    assert first.stdin is not None
    first.stdin.close()  # the holder's read returns and it exits normally
    assert first.wait(timeout=30) == 0
    with claim_gpu(tmp_path, [0, 1]) as claim:
        assert claim.gpu == 0


def test_module_has_no_torch_at_import() -> None:
    assert "torch" not in vars(slots)


# ---------------------------------------------------------------- trials_per_gpu: auto

from hpsearch.slots import GIB, MemoryProbe, auto_trials_per_gpu  # noqa: E402


def _probe(peak_gib: float, fixed_gib: float, free_gib: float, total_gib: float) -> MemoryProbe:
    return MemoryProbe(trial_peak=int(peak_gib * GIB), worker_fixed=int(fixed_gib * GIB), free=int(free_gib * GIB),
                       total=int(total_gib * GIB), batch_size=512)


@pytest.mark.parametrize(("probe", "cores", "gpus", "expected", "limit"), [
    (_probe(2, 1.5, 120, 140), 16, 1, 8, "the cap"),           # H200, small trials: the cap
    (_probe(2, 1.5, 120, 140), 4, 1, 4, "CPU cores"),          # few cores: one worker per core
    (_probe(2, 1.5, 120, 140), 16, 8, 2, "CPU cores"),         # 16 cores shared by 8 GPUs
    (_probe(10, 1, 60, 80), 16, 1, 4, "memory"),               # 60 - 12 headroom - 10 = 38 -> 1 + 38 // 11 = 4
    (_probe(30, 1, 60, 80), 16, 1, 1, "memory"),               # one big trial is all that fits
    (_probe(70, 1, 60, 80), 16, 1, 1, "memory"),               # does not even fit once: still one (it will OOM-retry)
])
def test_auto_trials_per_gpu_from_measured_numbers(probe: MemoryProbe, cores: int, gpus: int, expected: int,
                                                   limit: str) -> None:
    count, why = auto_trials_per_gpu(probe, cores, gpus)
    assert count == expected
    assert why.startswith(f"{expected} per GPU, set by {limit}: a trial peaks at {probe.trial_peak / GIB:.2f} GiB")


def test_auto_without_a_measurement_is_one_per_gpu() -> None:
    assert auto_trials_per_gpu(None, 16, 1) == (1, "1 per GPU (no memory measurement; set workers.trials_per_gpu "
                                                   "to choose)")
