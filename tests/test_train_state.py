"""The training state is one unit: a kill at any point between its writes resumes to the
weights of an uninterrupted run, or is refused; mismatched resumes are refused in one line."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import normlens.train as train_module
import normlens.train_state as ST
from normlens.data import load_text_file
from normlens.models import build_model
from normlens.models.checkpoint import load_checkpoint, model_tensors
from normlens.train import TrainConfig, TrainResultError, load_train_result, saved_state_mismatch, train

TINY = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=16)
CONFIG = TrainConfig(steps=12, eval_every=4, checkpoint_every=4, eval_seqs=8)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in normlens catches a BaseException."""


@pytest.fixture(scope="module")
def reference(embedded_splits):
    torch.manual_seed(0)
    model = build_model(**TINY)
    return model, train(model, embedded_splits, CONFIG, progress=False)


def assert_same_model(a, b):
    ta, tb = model_tensors(a), model_tensors(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def hidden_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def kill_at(monkeypatch, module, attr, *, call: int, when=lambda *a, **k: True):
    """Replace ``module.attr`` by a wrapper that raises Killed at its ``call``-th matching call."""
    real = getattr(module, attr)
    seen = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] == call:
                raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapper)
    return real


KILL_POINTS = {
    # inside the second commit (step 8): weights written, optimizer/RNG not yet
    "after model, before trainer.pt": (ST.torch, "save", 2, lambda *a, **k: True),
    # the step-8 folder is complete and renamed into place, the pointer still names step 4
    "before the pointer": (ST, "write_json", 2, lambda path, data: Path(path).name == ST.POINTER),
    # the pointer names step 8, the step-4 folder is not yet removed
    "after the pointer": (ST, "_remove", 1, lambda path: Path(path).name.startswith("step-")),
    # the final state is committed, model/ written, train_result.json not
    "before train_result.json": (train_module, "write_json", 1, lambda path, data: Path(path).name == "train_result.json"),
    # the final model: the new folder is complete, the rename into place not done
    "before the final model's rename": (ST.os, "rename", 1,
                                        lambda src, dst: Path(dst).name == "model" and "state" not in str(dst)),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_between_writes_resumes_to_the_uninterrupted_weights(point, embedded_splits, reference, tmp_path,
                                                                   monkeypatch):
    module, attr, call, when = KILL_POINTS[point]
    real = kill_at(monkeypatch, module, attr, call=call, when=when)
    torch.manual_seed(0)
    with pytest.raises(Killed):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(module, attr, real)
    resumed = build_model(**TINY)
    result = train(resumed, embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
    ref_model, ref_result = reference
    assert_same_model(ref_model, resumed)
    assert result.steps == list(range(12))
    assert result.train_loss == ref_result.train_loss and result.val_loss == ref_result.val_loss
    assert_same_model(ref_model, load_checkpoint(tmp_path / "model"))
    assert load_train_result(tmp_path / "train_result.json").val_loss == ref_result.val_loss
    assert not hidden_leftovers(tmp_path)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [ST.POINTER, "step-000012-done"]


def test_a_finished_run_is_returned_not_retrained(embedded_splits, reference, tmp_path, monkeypatch):
    train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "train_result.json").unlink()
    monkeypatch.setattr(train_module, "next_token_loss", lambda *a: pytest.fail("trained again"))
    model = build_model(**TINY, seed=0)
    result = train(model, embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
    assert_same_model(reference[0], model)
    assert result.val_loss == reference[1].val_loss
    assert (tmp_path / "train_result.json").is_file()


SIGKILL_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from normlens.data import load_embedded
    from normlens.models import build_model
    from normlens.train import TrainConfig, train

    real_save, calls = torch.save, [0]
    def save(*args, **kwargs):  # the second state commit dies between the weights and the optimizer
        calls[0] += 1
        if calls[0] == 2:
            os._exit(137)
        return real_save(*args, **kwargs)
    torch.save = save
    torch.manual_seed(0)
    train(build_model(n_layers=1, d_model=16, n_heads=2, n_ctx=16), load_embedded(max_bytes=200_000),
          TrainConfig(steps=12, eval_every=4, checkpoint_every=4, eval_seqs=8), checkpoint_dir=sys.argv[1],
          progress=False)
""")


def test_sigkilled_process_resumes_identically_and_leaves_no_temp_files(embedded_splits, reference, tmp_path):
    """A real process death (os._exit, no cleanup runs) inside the second state write."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGKILL_SCRIPT, str(out)], capture_output=True, text=True,
                          env=os.environ | {"TQDM_DISABLE": "1"})
    assert done.returncode == 137, done.stderr[-2000:]
    assert hidden_leftovers(out)  # the kill left a half-written state folder behind
    resumed = build_model(**TINY)
    result = train(resumed, embedded_splits, CONFIG, checkpoint_dir=out, progress=False)
    assert_same_model(reference[0], resumed)
    assert result.train_loss == reference[1].train_loss
    assert not hidden_leftovers(out)


def test_stale_temporary_files_are_removed(embedded_splits, tmp_path):
    config = TrainConfig(steps=4, eval_every=2, checkpoint_every=2, eval_seqs=4)
    train(build_model(**TINY), embedded_splits, config, checkpoint_dir=tmp_path, progress=False)
    leftovers = [tmp_path / "model" / ".model.safetensors.a1b2.tmp", tmp_path / ".train_result.json.x.tmp",
                 tmp_path / "state" / ".step-000002.q.tmp" / "trainer.pt", tmp_path / ".model.z.old" / "config.json",
                 tmp_path / "state" / "step-000002"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half") if path.suffix else path.mkdir()
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    train(build_model(**TINY), embedded_splits, config, checkpoint_dir=tmp_path, progress=False)
    assert not hidden_leftovers(tmp_path) and not (tmp_path / "state" / "step-000002").exists()
    assert user_file.read_text() == "mine"


# -- refusals ---------------------------------------------------------------------------

def interrupted_run(splits, folder, config=CONFIG):
    """A run killed after its first commit (step 4)."""
    real = train_module.token_windows
    calls = {"n": 0}

    def die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:
            raise Killed
        return real(*args, **kwargs)

    train_module.token_windows = die
    try:
        with pytest.raises(Killed):
            train(build_model(**TINY), splits, config, checkpoint_dir=folder, progress=False)
    finally:
        train_module.token_windows = real


def test_other_data_is_refused(embedded_splits, tmp_path):
    interrupted_run(embedded_splits, tmp_path)
    text = tmp_path / "other.txt"
    text.write_text("a different corpus, long enough to train on. " * 400)
    other = load_text_file(text)
    assert "other data" in saved_state_mismatch(tmp_path, build_model(**TINY).normlens_config, CONFIG, other)
    with pytest.raises(ST.TrainStateError, match="other data") as error:
        train(build_model(**TINY), other, CONFIG, checkpoint_dir=tmp_path, progress=False)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "state") in message and "--out" in message


def test_other_settings_name_the_differing_fields(embedded_splits, tmp_path):
    interrupted_run(embedded_splits, tmp_path)
    with pytest.raises(ST.TrainStateError, match=r"other training settings \(lr differ\)"):
        train(build_model(**TINY), embedded_splits, CONFIG.replace(lr=1e-2), checkpoint_dir=tmp_path,
              progress=False)


def test_tampered_or_damaged_state_is_refused(embedded_splits, tmp_path):
    interrupted_run(embedded_splits, tmp_path)
    step = tmp_path / "state" / "step-000004"
    (step / "history.json").write_text("{garbage")
    with pytest.raises(ST.TrainStateError, match="history.json' is changed or truncated"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
    pointer = tmp_path / "state" / ST.POINTER
    pointer.write_text("not json")
    with pytest.raises(ST.TrainStateError, match="current.json' is damaged"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)


def test_parts_of_different_steps_are_refused(embedded_splits, tmp_path):
    interrupted_run(embedded_splits, tmp_path)
    pointer = tmp_path / "state" / ST.POINTER
    data = json.loads(pointer.read_text())
    (tmp_path / "state" / "step-000004").rename(tmp_path / "state" / "step-000008")
    pointer.write_text(json.dumps(data | {"step": 8, "folder": "step-000008"}))
    with pytest.raises(ST.TrainStateError, match="is for step 4 but current.json says 8"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)


def test_older_layout_is_refused_and_reported(embedded_splits, tmp_path):
    (tmp_path / "state").mkdir()
    torch.save({"step": 4}, tmp_path / "state" / "trainer.pt")
    reason = saved_state_mismatch(tmp_path, build_model(**TINY).normlens_config, CONFIG)
    assert "older normlens" in reason
    with pytest.raises(ST.TrainStateError, match="older normlens"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)


def test_a_second_process_on_the_same_folder_is_refused(embedded_splits, tmp_path):
    with ST.run_lock(tmp_path):
        with pytest.raises(ST.TrainStateError, match="another process is training"):
            train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)


def test_out_that_is_a_file_is_refused_before_training(embedded_splits, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ST.TrainStateError, match="is a file, not a folder"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=path, progress=False)


@pytest.mark.parametrize("content", ["{garbage", "[1, 2]", '{"name": "x"}',
                                     '{"name": "x", "model_config": {}, "train_config": {}, "n_params": 1, '
                                     '"steps": [0], "train_loss": []}'])
def test_garbage_history_is_one_line_naming_file_and_fix(tmp_path, content):
    path = tmp_path / "train_result.json"
    path.write_text(content)
    with pytest.raises(TrainResultError) as error:
        load_train_result(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "normlens train" in message


def test_too_little_free_space_is_refused_before_training(embedded_splits, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    monkeypatch.setattr(train_module, "next_token_loss", lambda *a: pytest.fail("trained before the check"))
    with pytest.raises(ST.TrainStateError, match="MiB free but the run's states and checkpoints need"):
        train(build_model(**TINY), embedded_splits, CONFIG, checkpoint_dir=tmp_path, progress=False)
