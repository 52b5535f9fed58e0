"""The Python API as a notebook or a script calls it: a caller's mistake is one clear
MiniGPTError at the call (not a torch error from deep inside, nor a silently wrong result), and
what the library says fits a Python caller (train(..., resume=True), not only --resume)."""

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MAIN_THREAD_ONLY, SignalAt, tiny_config
from minigpt import (
    Batches,
    BPETokenizer,
    CharTokenizer,
    MiniGPT,
    MiniGPTError,
    ModelConfig,
    Splits,
    TrainConfig,
    TrainingStopped,
    estimate_loss,
    filter_logits,
    generate,
    get_batch,
    load_checkpoint,
    load_model,
    load_tokens,
    lr_at,
    make_optimizer,
    prepare,
    resolve_config,
    resume_config,
    save_checkpoint,
    stream,
    train,
)
from minigpt.diagnostics.probes import SECTIONS, standard_probes
from minigpt.files import read_jsonl


def batches_of(tokens: int = 200) -> Batches:
    return Batches(Splits.from_tokens(np.arange(tokens) % 65), 2, 8)


MISTAKES = [  # (a call, what the error says); m: a small MiniGPT, idx: (1, 3) token ids
    (lambda m, idx: resolve_config(overrides=["steps", 300]),
     "overrides must be a dict of settings ({'steps': 300}), got list"),
    (lambda m, idx: load_model(None), "run_dir must be a path (str or Path), got NoneType"),
    (lambda m, idx: train(resolve_config(), 3), "out_dir must be a path (str or Path), got int"),
    (lambda m, idx: train({"steps": 3}, "unused"),
     "a RunConfig was expected, such as resolve_config(overrides={'steps': 300}) makes; got dict"),
    (lambda m, idx: train({"steps": 3}),  # (no out_dir: before the default folder is named)
     "a RunConfig was expected, such as resolve_config(overrides={'steps': 300}) makes; got dict"),
    (lambda m, idx: CharTokenizer.from_text("abc").decode(idx),  # (generate's (B, T), not a row)
     "decode takes one sequence of token ids (of generate's (B, T) batch, a row: "
     "ids[0].tolist()), got an element of type Tensor of shape (3,)"),
    (lambda m, idx: CharTokenizer.from_text("abc").decode(idx[:, :1]),  # a (1, 1) batch: its
     "decode takes one sequence of token ids (of generate's (B, T) batch, a row: "  # row
     "ids[0].tolist()), got an element of type Tensor of shape (1,)"),  # an int, yet a row
    (lambda m, idx: CharTokenizer.from_text("abc").decode("ab"),  # (the text, not its ids: not
     "decode takes one sequence of token ids (of generate's (B, T) batch, a row: "  # int's
     "ids[0].tolist()), got an element of type str"),  # ValueError)
    (lambda m, idx: BPETokenizer.train(["to be or not"], 257).decode([[1, 2]]),
     "decode takes one sequence of token ids (of generate's (B, T) batch, a row: "
     "ids[0].tolist()), got an element of type list"),
    (lambda m, idx: CharTokenizer.from_text("abc").decode(idx.numpy()),  # (numpy rows too)
     "decode takes one sequence of token ids (of generate's (B, T) batch, a row: "
     "ids[0].tolist()), got an element of type ndarray of shape (3,)"),
    (lambda m, idx: CharTokenizer.from_text("abc").encode(["ab"]),  # (it named 'ab' as unseen)
     "encode takes a str, got list"),
    (lambda m, idx: BPETokenizer.train(["to be or not"], 257).encode(5),
     "encode takes a str, got int"),
    (lambda m, idx: MiniGPT(ModelConfig()),
     "MiniGPT takes vocab_size and options; from a ModelConfig: MiniGPT.from_config(config)"),
    (lambda m, idx: MiniGPT(65, n_embd=64.0), "'n_embd' must be int, got 64.0"),
    (lambda m, idx: resolve_config(overrides={"steps": "20"}), "'steps' must be int, got '20'"),
    (lambda m, idx: resolve_config(overrides={"plots": False}),  # a [diag] setting
     "unknown setting 'plots'; did you mean 'pos'? (if it is a setting beyond [model], [train] "
     "and [data], such as the diagnostics' [diag], pass its section: "
     "sections=minigpt.diagnostics.probes.SECTIONS)"),
    (lambda m, idx: Splits.from_tokens(np.arange(100), 1.5),
     "val_fraction (the part held out) must be in (0, 1), got 1.5"),
    (lambda m, idx: Batches(Splits.from_tokens(np.arange(100)), 0, 8),
     "batch_size and block_size must be whole numbers >= 1, got 0 and 8"),
    (lambda m, idx: Batches(Splits.from_tokens(np.arange(100)), 2.5, 8),
     "batch_size and block_size must be whole numbers >= 1, got 2.5 and 8"),
    (lambda m, idx: Batches(Splits.from_tokens(np.arange(100)), 4, True),  # (a bool is no size)
     "batch_size and block_size must be whole numbers >= 1, got 4 and True"),
    (lambda m, idx: estimate_loss(m, batches_of(), "val", 0), "n_batches must be at least 1"),
    (lambda m, idx: stream(m, idx, -3), "max_new_tokens must be a whole number >= 0, got -3"),
    (lambda m, idx: stream(m, idx + 64, 5),  # (before the forward that would also refuse it)
     "idx holds ids outside the model's vocabulary (0 to 64): encoded by another run's "
     "tokenizer?"),
    (lambda m, idx: stream(m, idx - 2, 5), "idx holds ids outside the model's vocabulary"),
    (lambda m, idx: stream(m, idx, 5, top_k=0), "top_k must be a whole number >= 1, got 0"),
    (lambda m, idx: stream(m, idx, 5, top_k=2.5), "top_k must be a whole number >= 1, got 2.5"),
    (lambda m, idx: filter_logits(torch.zeros(1, 65), top_k=-1),
     "top_k must be a whole number >= 1, got -1"),
    (lambda m, idx: filter_logits(torch.zeros(1, 65), top_p=2), "top_p must be in (0, 1], got 2"),
    (lambda m, idx: filter_logits(torch.zeros(65), top_k=2),
     "logits must be (B, V), got shape (65,)"),
    (lambda m, idx: get_batch(np.arange(20) % 7, 2, 20),
     "data must be one row of token ids longer than block_size (20), got (20,)"),
    (lambda m, idx: make_optimizer(m, TrainConfig(optimizer="adam")),  # (not AdamW, silently)
     "unknown optimizer 'adam': adamw, sgd or muon"),
    (lambda m, idx: BPETokenizer.train("to be or not to be", 300),  # (each character a text)
     "texts must be an iterable of strings: [text] for one text"),
    (lambda m, idx: save_checkpoint("unused", "last", m, None, {}, {}),  # (l.json, a.json, ...)
     "tags must be a list of names (['last'], ['last', 'best']), got 'last'"),
    (lambda m, idx: save_checkpoint("unused", ["../up"], m, None, {}, {}),
     "tags must be a list of names"),
    (lambda m, idx: m(idx.float()),  # (a float tensor would index the embedding: torch's error)
     "idx must be a (B, T) tensor of token ids, got (1, 3) torch.float32"),
    (lambda m, idx: Batches(Splits.from_tokens(np.arange(100) % 7), 2, 8).get_batch("test"),
     "split must be 'train' or 'val', got 'test'"),
    (lambda m, idx: prepare("unused", "unused", tokenizer="word"),  # (before any folder is made)
     "tokenizer must be char or bpe, got 'word'"),
    (lambda m, idx: m(idx + 64),  # (the forward the lesson's loop calls, as generate says it)
     "idx holds ids outside the model's vocabulary (0 to 64): encoded by another run's "
     "tokenizer?"),
    (lambda m, idx: m(idx, idx - 2), "targets hold ids outside the model's vocabulary (0 to "
                                     "64)"),
    (lambda m, idx: generate(m, [[1, 2]], 5),
     "idx must be a (B, T) tensor of token ids with T >= 1, got list"),
    (lambda m, idx: generate(m, idx, 5, temperature=None), "temperature must be >= 0 (and "
                                                           "finite), got None"),
    (lambda m, idx: generate(m, idx, 5, temperature="0.8"), "temperature must be >= 0 (and "
                                                            "finite), got '0.8'"),  # (a string)
    (lambda m, idx: stream(m, idx, 5, top_k="5"), "top_k must be a whole number >= 1, got '5'"),
    (lambda m, idx: generate(m, idx, 5, temperature=np.float64(-1.0)),
     "temperature must be >= 0 (and finite), got -1.0"),  # (not np.float64(-1.0))
    (lambda m, idx: stream(m, idx, 5, top_p="0.9"), "top_p must be in (0, 1], got '0.9'"),
    (lambda m, idx: lr_at(-5, lr=1e-2, total_steps=100),
     "lr_at takes a step >= 0 of total_steps >= 1"),
    (lambda m, idx: lr_at(-1, lr=1e-2, total_steps=100, schedule="constant"),
     "lr_at takes a step >= 0 of total_steps >= 1, got step -1 of 100"),
    (lambda m, idx: lr_at(0, lr=1e-2, total_steps=0, schedule="cosine-annealing"),
     "lr_at takes a step >= 0 of total_steps >= 1, got step 0 of 0"),
]


@pytest.mark.parametrize("call, message", MISTAKES)
def test_a_mistake_is_one_clear_error_at_the_call(call, message):
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=8)
    with pytest.raises(MiniGPTError, match="^" + re.escape(message)) as info:
        call(model, torch.tensor([[1, 2, 3]]))  # (stream's: raised before any token is asked)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # (a caller's `except ValueError` catches it)


def test_a_notebook_shows_the_cells_line_and_the_error_not_minigpts_frames(
        tmp_path, monkeypatch, capsys):
    """IPython (a notebook's kernel) shows a MiniGPTError or a TrainingStopped as the lines of
    the cell that led to it and the message, where its traceback ran through config.py."""
    limit = sys.getrecursionlimit()  # (importing IPython raises it to 3000: put back after)
    interactive = pytest.importorskip("IPython.core.interactiveshell")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))  # (its history database: not the user's)
    shell = interactive.InteractiveShell.instance()
    try:
        shell.run_cell("from minigpt import resolve_config\nsteps = -5\n"
                       "cfg = resolve_config(overrides={'steps': steps})")
        said = capsys.readouterr().out.strip().splitlines()
        shell.run_cell("from minigpt import TrainingStopped\n"
                       "raise TrainingStopped(2, 'saved')")
        stopped = capsys.readouterr().out.strip().splitlines()
    finally:
        interactive.InteractiveShell.clear_instance()
        sys.setrecursionlimit(limit)
    assert said[0].startswith('File "<ipython-input-') and "line 3" in said[0]  # the cell's
    assert said[1].strip() == "cfg = resolve_config(overrides={'steps': steps})"  # line 3
    assert said[-1] == "MiniGPTError: 'steps' must be positive, got -5"
    assert not any("File" in line for line in said[1:])  # no frame of minigpt or of IPython
    assert stopped[-2:] == ["    raise TrainingStopped(2, 'saved')", "TrainingStopped: saved"]


def test_a_notebook_shows_the_notes_added_to_an_error_below_its_line():
    """A note a cell adds (e.add_note, as Python's own traceback shows it) stays in the display
    IPython takes from _render_traceback_: it follows the error's line."""
    error = MiniGPTError("no such run")
    error.add_note("(tried: runs/a)")
    assert error._render_traceback_()[-2:] == ["MiniGPTError: no such run", "(tried: runs/a)"]


def test_overrides_take_paths_and_numpy_numbers(tmp_path):
    cfg = resolve_config(overrides={"text": tmp_path / "a.txt", "steps": np.int64(5),
                                    "lr": np.float32(0.5), "min_lr": 0})
    assert (cfg.data.text, cfg.train.steps, cfg.train.lr) == (str(tmp_path / "a.txt"), 5, 0.5)
    assert (type(cfg.train.steps), type(cfg.train.lr), type(cfg.train.min_lr)) == (int, float,
                                                                                  float)
    for wrong in ({"steps": 2.5}, {"steps": True}, {"steps": np.float64(3)}):
        with pytest.raises(MiniGPTError, match="'steps' must be int"):
            resolve_config(overrides=wrong)


def test_load_tokens_reads_a_prepared_folder_as_its_text(small_text, tmp_path):
    prepare(str(small_text), tmp_path / "prepared", progress=False)
    tokens, tok = load_tokens(small_text)
    from_folder, folder_tok = load_tokens(tmp_path / "prepared")
    assert folder_tok == tok and np.array_equal(np.asarray(from_folder), np.asarray(tokens))


def test_a_run_on_a_relative_text_path_resumes_from_another_folder(small_text, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(small_text.parent)  # a notebook's folder, the text named from it
    train(tiny_config(small_text.name, steps=2, eval_every=2), tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path)  # resumed from elsewhere
    cfg = resume_config(tmp_path / "run")
    cfg.train.steps = 4
    assert train(cfg, tmp_path / "run", resume=True, progress=False).summary["steps"] == 4


def test_a_resume_in_python_keeps_the_runs_diag_settings(small_text, tmp_path):
    """resume_config(folder) takes the core's sections alone: the run's [diag] settings are
    saved again as they were, for the command line's --resume, not lost."""
    folder = tmp_path / "run"
    train(tiny_config(small_text, steps=2, eval_every=2, sample_every=7), folder, progress=False)
    cfg = resume_config(folder)
    assert "diag" not in cfg.extra
    cfg.train.steps = 4
    train(cfg, folder, resume=True, progress=False)
    assert resume_config(folder, sections=SECTIONS).extra["diag"].sample_every == 7
    assert json.loads((folder / "config.json").read_text())["config"]["diag"]["sample_every"] == 7


def test_a_resume_that_changes_a_diag_setting_saves_the_new_one(small_text, tmp_path):
    """Only the sections the resuming cfg lacks are kept from the checkpoint: a [diag] setting
    it changes is the one saved next, in the checkpoint and in config.json, not the old one."""
    folder = tmp_path / "run"
    train(tiny_config(small_text, steps=2, eval_every=2, sample_every=7), folder, progress=False)
    cfg = resume_config(folder, {"steps": 4, "sample_every": 3}, sections=SECTIONS)
    train(cfg, folder, resume=True, progress=False)
    assert resume_config(folder, sections=SECTIONS).extra["diag"].sample_every == 3
    assert json.loads((folder / "config.json").read_text())["config"]["diag"]["sample_every"] == 3


def test_probes_handed_to_a_second_run_record_it_too(small_text, tmp_path):
    cfg = tiny_config(small_text, steps=12, eval_every=6, sample_every=5)
    probes = standard_probes(cfg)
    for name in ("first", "second"):  # a notebook's cell, run twice
        train(cfg, tmp_path / name, probes=probes, progress=False)
    steps = [[row["step"] for row in read_jsonl(tmp_path / name / "samples.jsonl")]
             for name in ("first", "second")]
    assert steps[0] == steps[1] == [0, 6, 11]  # the rows at or past each 5th step, and the end


def test_a_run_folder_and_its_checkpoints_folder_are_told_apart(cli_run):
    """load_checkpoint reads a checkpoints folder, load_model a run folder: each given the
    other's said only "no 'last' checkpoint in ..." (or ".../checkpoints/checkpoints")."""
    run = cli_run[0]
    with pytest.raises(MiniGPTError, match="is a run folder: its checkpoints are in .*checkpo"):
        load_checkpoint(run)
    with pytest.raises(MiniGPTError, match="is a checkpoints folder: give its run folder"):
        load_model(run / "checkpoints")


def test_resuming_where_there_is_no_checkpoint_writes_nothing(small_text, tmp_path):
    cfg = tiny_config(small_text, steps=5)
    with pytest.raises(MiniGPTError, match=f"^no run folder {re.escape(str(tmp_path / 'x'))}$"):
        train(cfg, tmp_path / "x", resume=True, progress=False)
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiniGPTError, match=" holds no checkpoints: not a run folder, or "):
        train(cfg, tmp_path / "empty", resume=True, progress=False)
    assert list((tmp_path / "empty").iterdir()) == []  # no lock, no checkpoints folder


def test_probes_that_are_no_probes_are_refused_at_the_call(small_text, tmp_path):
    """standard_probes not called, or put in a list uncalled, is one error naming `probes`
    before the run folder is made (it had been a TypeError or an AttributeError from inside the
    loop, the second after config.json, tokenizer.json and run.lock were written)."""
    cfg = tiny_config(small_text, steps=5)
    for probes, got in [(standard_probes, "got function"), ([standard_probes],
                                                             "got a function in it"),
                        ("tensorboard", "got str")]:  # (a str, not a list of its letters)
        with pytest.raises(MiniGPTError, match="^probes must be a list of probes "
                           rf"\(such as standard_probes\(cfg\) makes\), {got}$"):
            train(cfg, tmp_path / "run", probes=probes, progress=False)
        assert not (tmp_path / "run").exists()


def test_a_probe_of_ones_own_without_its_hooks_is_refused_as_the_docs_quote(small_text,
                                                                           tmp_path):
    """docs/reliability.md lists the errors users see, as they see them: a list holding a probe
    written without all six hooks (only on_row, say) is refused in the line it quotes."""
    class MyProbe:
        def on_row(self, row):
            pass

    with pytest.raises(MiniGPTError) as e:
        train(tiny_config(small_text, steps=2), tmp_path / "run", probes=[MyProbe()],
              progress=False)
    assert not (tmp_path / "run").exists()
    docs = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert f"`{e.value}`" in docs

    class OlderProbe(MyProbe):  # the five hooks the docstring once listed, no check(folder)
        start = end = state_dict = load_state_dict = MyProbe.on_row

    with pytest.raises(MiniGPTError, match="got an OlderProbe in it$"):  # (not AttributeError)
        train(tiny_config(small_text, steps=2), tmp_path / "run", probes=[OlderProbe()],
              progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_that_is_not_true_or_false_is_refused_at_the_call(small_text, tmp_path):
    """resume='no' was truthy, so taken for True: a new run's folder was 'no run folder'; and
    None or 0 passed for False. Each is one error naming `resume`, before anything is written."""
    cfg = tiny_config(small_text, steps=2)
    for resume in ("no", None, 1):
        with pytest.raises(MiniGPTError, match=re.escape(
                f"resume must be True or False, got {resume!r}") + "$"):
            train(cfg, tmp_path / "run", resume=resume, progress=False)
        assert not (tmp_path / "run").exists()


def test_a_setting_set_in_code_under_no_settings_name_is_refused(small_text, tmp_path):
    """cfg.steps = 3 (the flat name overrides take, where the setting is cfg.train.steps) or a
    misspelt cfg.train.stpes made an attribute train never read: the run trained its steps
    as if nothing had been set. Refused as a config file's unknown key is, naming where."""
    for where, name, hint in [("cfg", "steps", "cfg.train.steps"),
                              ("cfg.train", "stpes", "cfg.train.steps"),
                              ("cfg.model", "n_heads", "cfg.model.n_head")]:
        cfg = tiny_config(small_text, steps=2)
        setattr({"cfg": cfg, "cfg.train": cfg.train, "cfg.model": cfg.model}[where], name, 3)
        with pytest.raises(MiniGPTError, match=re.escape(
                f"{where} has no setting '{name}'; did you mean {hint}?") + "$"):
            train(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


@MAIN_THREAD_ONLY
def test_an_interrupted_or_repeated_train_says_how_to_go_on_in_python(small_text, tmp_path):
    cfg, folder = tiny_config(small_text, steps=50, log_every=1), tmp_path / "run"
    with pytest.raises(TrainingStopped) as info:
        train(cfg, folder, probes=[SignalAt()], progress=False)
    # the call names the run's own settings, whatever a notebook's cfg holds by then
    again = f"train(resume_config({str(folder)!r}), {str(folder)!r}, resume=True)"
    assert str(info.value) == f"checkpoint saved after 4 steps; {again} continues"
    with pytest.raises(MiniGPTError, match=re.escape(f"(in Python: {again})")):
        train(cfg, folder, progress=False)  # the cell run again
    cfg.train.lr = 0.5  # (the cell's cfg, edited since)
    assert eval(again.replace("resume=True", "resume=True, progress=False"),
                {"train": train, "resume_config": resume_config}).summary["steps"] == 50
    assert json.loads((folder / "config.json").read_text())["config"]["train"]["lr"] != 0.5


@MAIN_THREAD_ONLY
def test_ctrl_c_during_the_last_evaluation_stops_as_it_says_it_will(small_text, tmp_path):
    """("finishing this step (and an evaluation under way), then saving a checkpoint"): not on
    to the final evaluation and sample, which a resume does."""
    cfg, folder = tiny_config(small_text, steps=6, eval_every=3), tmp_path / "run"
    with pytest.raises(TrainingStopped, match="checkpoint saved after 6 steps"):
        train(cfg, folder, probes=[SignalAt(5)], progress=False)  # at the last step's row
    assert not (folder / "summary.json").exists()
    assert train(cfg, folder, resume=True, progress=False).summary["steps"] == 6


def test_train_leaves_the_callers_config_as_it_was(small_text, tmp_path):
    """The run resolves its vocabulary, paths and dtype in a copy (its config.json has them):
    the same config object trains the next run as given (a loop over a learning rate, say)."""
    cfg = tiny_config(small_text, steps=2, eval_every=2, vocab_size=500)
    before = copy.deepcopy(cfg)
    result = train(cfg, tmp_path / "run", progress=False)
    assert cfg == before and result.tokenizer.vocab_size < 500
