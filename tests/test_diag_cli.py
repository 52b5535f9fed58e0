"""The diagnostic commands on a run made by `minigpt train`: gradflow, attention, compare,
report; the report opened in a real headless Chromium."""

import base64
import html.parser
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import minigpt
import minigpt.trainer
from conftest import (
    TINY_FLAGS,
    CrashAt,
    in_process,
    one_line_error,
    read_png,
    run_cli,
    tiny_config,
)
from minigpt import resolve_config, resume_config, train
from minigpt.cli import main
from minigpt.console import visible
from minigpt.diagnostics.plots import plot_run_curves
from minigpt.diagnostics.probes import standard_probes
from minigpt.diagnostics.reading import Finding
from minigpt.diagnostics.report import (
    attention_html,
    build_report,
    curves_html,
    gradflow_html,
    graph_html,
    reading_html,
    samples_html,
    summary_html,
)
from minigpt.errors import MiniGPTError
from minigpt.files import lock_folder, read_jsonl


def cli(capsys, *args: str) -> str:
    """`minigpt ARGS` in-process (`main`, what the command runs; `cli_run` runs the command
    itself): it must succeed; what it printed."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_gradflow_table_covers_every_parameter(cli_run, capsys):
    """Every parameter's row, and its NORM(G) that of autograd's gradient of the loss on the
    run's next training batch at its best checkpoint (the names alone held for a table of
    another batch's, or another checkpoint's, gradients)."""
    from minigpt.run import open_run

    said = cli(capsys, "gradflow", "--run", str(cli_run[0]))
    assert "(best)" in said
    assert "parameters" in said.strip().splitlines()[-1]  # the summary line
    rows = {line.split()[0]: line.split() for line in said.splitlines()[3:-1]}
    run = open_run(cli_run[0], "best", "cpu")  # the oracle: the batch the command draws next
    x, y = run.batches.get_batch("train")
    run.model.train()
    run.model(x, y)[1].backward()
    named = dict(run.model.named_parameters())
    assert list(rows) == list(named)
    for name, p in named.items():  # NORM(G), the 5th column, printed to 3 figures (abs: the
        # key bias's is zero but for rounding, 1e-10 to 1e-6 from one process to the next)
        assert float(rows[name][4]) == pytest.approx(float(p.grad.norm()), rel=6e-3,
                                                     abs=1e-5), name


def test_gradflow_steps_at_the_schedules_rate_in_steps_or_in_seconds(small_text, tmp_path,
                                                                      capsys):
    def probe_header(**settings) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        train(tiny_config(small_text, **{"warmup_steps": 2, "lr": 1e-3, **settings}), folder,
              progress=False)
        main(["gradflow", "--run", str(folder), "--checkpoint", "last"])
        return capsys.readouterr().out.splitlines()[0]

    # cosine to 0 over 10 steps: the last step's rate is 0, and the header says what to do
    assert probe_header(steps=10).endswith("at lr 0 (where the schedule ends: --lr sets another)")
    # a time budget's cosine follows the seconds: spent, it is at min_lr, however few the steps
    # (no warmup: a step-counted warmup a slow machine had not finished in 1 s was still rising)
    assert probe_header(steps=10**5, time_budget=1.0, min_lr=1e-4,
                        warmup_steps=0).endswith("at lr 0.0001")


def test_gradflow_of_a_finished_run_steps_at_its_last_steps_rate(small_text, tmp_path, capsys):
    """A finished run takes no next step: gradflow probes at the rate of the step it took last,
    steps - 1 (cosine-annealing's, unlike cosine's, is not yet min_lr there: the rate of a step
    past the end, min_lr, was probed instead)."""
    from minigpt.schedule import schedule_lr

    cfg = tiny_config(small_text, steps=4, schedule="cosine-annealing", warmup_steps=0,
                      lr=1e-3, min_lr=0.0)
    train(cfg, tmp_path / "run", progress=False)
    last = schedule_lr(cfg.train, cfg.train.steps - 1)
    assert f"{last:.3g}" != f"{schedule_lr(cfg.train, cfg.train.steps):.3g}"  # (tells apart)
    main(["gradflow", "--run", str(tmp_path / "run"), "--checkpoint", "last"])
    assert capsys.readouterr().out.splitlines()[0].endswith(f"at lr {last:.3g}")
    # --lr 0, the lowest the help allows (gradients without an update), is taken, not refused
    assert main(["gradflow", "--run", str(tmp_path / "run"), "--lr", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("at lr 0")


def test_attention_of_a_run_goes_into_its_folder(cli_run, tmp_path, capsys, monkeypatch):
    """Without --out, the heatmaps are the run folder's attention.png, not the working
    folder's (as graph's and report's defaults are the run's)."""
    run = tmp_path / "run"  # (a copy: the shared run folder keeps its own files)
    shutil.copytree(cli_run[0], run)
    (run / "attention.png").unlink(missing_ok=True)
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "attention", "--run", str(run), "--device", "cpu") == (
        f"wrote {run / 'attention.png'}\n")
    read_png(run / "attention.png")
    assert not (tmp_path / "attention.png").exists()


def test_attention_command_writes_a_heatmap_grid(cli_run, tmp_path, capsys, monkeypatch):
    """The maps drawn are the best checkpoint's on --text, each character a label (the
    picture's shape alone held for maps of another text)."""
    import minigpt.diagnostics.attention as attention
    from minigpt.checkpoint import load_model

    drawn, plot = [], attention.plot_attention
    monkeypatch.setattr(attention, "plot_attention",
                        lambda maps, labels, *a, **kw: drawn.append((maps, labels)) or
                        plot(maps, labels, *a, **kw))
    png, text = tmp_path / "att.png", "ROMEO: what light"
    cli(capsys, "attention", "--run", str(cli_run[0]), "--text", text, "--out", str(png))
    height, width, _ = read_png(png).shape  # the run's 1 layer x 2 heads: two squares abreast
    assert 1.4 < width / height < 2.2  # (one square and its colour bar: about 1.1; 2 x 1: 0.6)
    model, tok, _ = load_model(cli_run[0], "best", "cpu")
    [(maps, labels)] = drawn
    assert labels == list(text)
    torch.testing.assert_close(maps, attention.attention_maps(model, torch.tensor([tok.encode(
        text)])), atol=0, rtol=0)


def test_attention_without_text_reads_the_probes_text_as_far_as_the_vocabulary_has_it(
        cli_run, tmp_path, capsys, monkeypatch):
    """The default text's characters the run's text never had are left out (its 'B', 'f' and
    ','), the rest drawn as the run's attention probe draws them."""
    import minigpt.diagnostics.attention as attention
    from minigpt.diagnostics.probes import DiagConfig

    drawn, plot = [], attention.plot_attention
    monkeypatch.setattr(attention, "plot_attention",
                        lambda maps, labels, *a, **kw: drawn.append(labels) or
                        plot(maps, labels, *a, **kw))
    png = tmp_path / "att.png"
    said = cli(capsys, "attention", "--run", str(cli_run[0]), "--out", str(png))
    known = set(cli_run[2].read_text())
    expected = [c for c in DiagConfig.attention_text if c in known]
    assert drawn == [expected] and expected[:6] == list("ROMEO:") and "f" not in expected
    assert said == f"wrote {png}\n"
    read_png(png)


def test_compare_command_prints_a_table(small_text, tmp_path, capsys):
    out = tmp_path / "cmp"
    r = in_process(capsys, "compare", "--optimizers", "sgd:0.5,adamw", *TINY_FLAGS, "--steps",
                   "10", "--eval-every", "5", "--text", str(small_text), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "sgd lr 0.5" in r.stdout and "adamw" in r.stdout and "final val" in r.stdout
    table = json.loads((out / "compare.json").read_text())
    assert len(table) == 2
    # each row is its own variant's run: trained with its optimizer and rate (seed's for adamw),
    # its final loss the one that run's summary.json holds (the names alone passed a compare
    # that trained every variant alike)
    trained = [json.loads((out / row["folder"] / "config.json").read_text())["config"]["train"]
               for row in table]
    assert [(t["optimizer"], t["lr"]) for t in trained] == [
        ("sgd", 0.5), ("adamw", resolve_config("seed").train.lr)]
    for row, line in zip(table, r.stdout.splitlines()[2:4], strict=True):  # (its two rows)
        final = json.loads((out / row["folder"] / "summary.json").read_text())["final_val_loss"]
        assert line.startswith(row["variant"] + " ")
        assert line[len(row["variant"]):].split()[0] == f"{final:.4f}"
    read_png(out / "compare.png")
    r = in_process(capsys, "report", "--run", str(out))  # (it said: no 'best' checkpoint in cmp/)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds a comparison" in r.stderr and "0-sgd" in r.stderr


def test_compare_trains_a_config_files_steps(small_text, tmp_path, capsys, monkeypatch):
    """compare's own steps (1000) stand below a --config file's (it trained 1000 over a file's
    steps = 3) and over a preset's (pretrain's 61,036); a variant's steps stand over all."""
    monkeypatch.setattr("minigpt.cli.COMPARE_STEPS", 4)  # (1000: steps of a tiny model)
    (tmp_path / "c.toml").write_text("[train]\nsteps = 3\n")
    trained = {}
    for config in (["--config", str(tmp_path / "c.toml")], []):
        out = tmp_path / f"cmp{len(config)}"
        r = in_process(capsys, "compare", *config, "--variant", "a:lr=1e-3", "--variant",
                       "b:steps=2", "--variant", "c:preset=pretrain,unet=false", *TINY_FLAGS,
                       "--text", str(small_text), "--out", str(out))
        assert r.returncode == 0, r.stderr
        trained[len(config)] = {
            d.name: json.loads((d / "config.json").read_text())["config"]["train"]["steps"]
            for d in out.iterdir() if d.is_dir()}
    assert trained == {2: {"0-a": 3, "1-b": 2, "2-c": 3}, 0: {"0-a": 4, "1-b": 2, "2-c": 4}}


def test_compare_starts_every_variant_from_the_preset_given(small_text, tmp_path, capsys):
    """--preset reaches each variant's run as train's does (its schedule and betas, which no
    flag here sets): compare had been free to start them all from seed without a word."""
    out = tmp_path / "cmp"
    r = in_process(capsys, "compare", "--preset", "seed-reference", "--optimizers", "adamw",
                   *TINY_FLAGS, "--steps", "1", "--eval-every", "1", "--text", str(small_text),
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    want, seed = resolve_config("seed-reference").train, resolve_config("seed").train
    assert (want.schedule, want.beta2) != (seed.schedule, seed.beta2)  # (telling them apart)
    [run] = [d for d in out.iterdir() if d.is_dir()]
    got = json.loads((run / "config.json").read_text())["config"]["train"]
    assert (got["schedule"], got["beta2"]) == (want.schedule, want.beta2)


def test_a_comparison_of_one_variant_says_there_is_nothing_to_compare(small_text, tmp_path,
                                                                      capsys):
    r = in_process(capsys, "compare", "--optimizers", "adamw", *TINY_FLAGS, "--steps", "2",
                   "--eval-every", "1", "--text", str(small_text), "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert "warning: one variant (adamw): nothing to compare it with; give another" in r.stderr


def test_a_comparison_started_in_the_same_second_as_another_gets_its_own_folder(
        small_text, tmp_path, capsys, monkeypatch, clock_at_230021):
    """Without --out, a second comparison started within the same second went on into the
    first's folder (`compare` continues a comparison found in its --out)."""
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "runs" / "compare-20261206-230021"
    first.mkdir(parents=True)
    r = in_process(capsys, "compare", "--optimizers", "adamw", *TINY_FLAGS, "--steps", "2",
                   "--eval-every", "1", "--text", str(small_text))
    assert r.returncode == 0, r.stderr
    assert not any(first.iterdir())
    assert "runs/compare-20261206-230021-2/compare.png" in r.stdout
    assert (first.with_name(first.name + "-2") / "compare.json").is_file()


def test_a_second_compare_in_a_folder_another_compare_holds_is_refused(small_text, tmp_path,
                                                                       capsys):
    """Two compares on one --out raced: the second wrote variants.json over the first's and
    failed on a variant's folder. The first's folder, just begun (its variants.json written,
    no variant trained yet), held as its process holds it: the second says so and touches
    nothing there."""
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "variants.json").write_text('{"adamw": {}}\n')  # (the first's)
    with lock_folder(out):
        line = one_line_error(capsys, ["compare", "--optimizers", "sgd:0.5", *TINY_FLAGS,
                                       "--steps", "2", "--text", str(small_text),
                                       "--out", str(out)])
    assert f"{out} is in use by another minigpt process (pid {os.getpid()})" in line
    assert (out / "variants.json").read_text() == '{"adamw": {}}\n'
    assert sorted(p.name for p in out.iterdir()) == ["run.lock", "variants.json"]


@pytest.fixture(scope="module")
def report(cli_run, tmp_path_factory):
    out, _, _ = cli_run
    folder = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(out, folder)
    assert main(["report", "--run", str(folder)]) == 0
    return folder / "report.html"


def test_report_is_self_contained_and_prints_the_reading_of_the_curve(report, capsys):
    page = report.read_text()
    for section in ["summary", "curves", "reading", "gradflow", "attention", "samples", "graph",
                    "config"]:
        assert f'id="{section}"' in page
    assert 'src="http' not in page and "src='http" not in page  # nothing fetched
    assert page.count('src="data:image/') >= 5
    assert "Reading the curve" in page and "near ln" in page  # the step-0 loss, read
    said = cli(capsys, "report", "--run", str(report.parent), "--out",
               str(report.parent / "r2.html"))
    assert said.startswith("Reading the curve:\n- step 0: loss ")


def test_a_report_writes_its_page_and_nothing_else(cli_run, tmp_path, capsys):
    """It drew the graph into the run folder (graph.dot, graph.svg) whatever --out said: a run
    folder may be read-only, or another's, and graph's own graph.png there was left of another
    drawing than the .svg beside it. The graph is drawn for the page only."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "report.html").unlink(missing_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    cli(capsys, "report", "--run", str(run), "--out", str(tmp_path / "pages" / "r.html"))
    cli(capsys, "report", "--run", str(run))
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == {
        **before, run / "report.html": (run / "report.html").stat().st_mtime_ns}
    assert [p.name for p in (tmp_path / "pages").iterdir()] == ["r.html"]
    for page in (tmp_path / "pages" / "r.html", run / "report.html"):
        if shutil.which("dot"):  # (the pages have the graph still)
            assert 'alt="computation graph" src="data:image/svg+xml' in page.read_text()


@pytest.mark.parametrize("damage", ["{", "[]", '{"steps": 3}'])
def test_a_damaged_summary_is_a_section_that_says_so(cli_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "summary.json").write_text(damage)
    assert "No readable summary.json" in build_report(run)


def test_the_report_of_an_unfinished_run_says_where_it_stopped(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "summary.json").unlink()  # as a run stopped before its end leaves it
    step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    assert (f"the run has not finished; its last checkpoint is after {step} steps: minigpt "
            f"train --resume {run} continues it") in build_report(run)
    with lock_folder(run):  # a run training there now: no resume to suggest
        page = build_report(run)
    assert (f"the run is training now, in process {os.getpid()}; its last checkpoint is after "
            f"{step} steps)") in page and "--resume" not in page


def test_the_report_of_an_unfinished_compare_variant_says_compare_continues_it(cli_run,
                                                                               tmp_path):
    """A variant a compare left unfinished (Ctrl-C, a crash) is continued by that compare
    command (docs/reliability.md): train --resume would finish it outside the comparison. The
    report said train --resume, and 'after 1 steps' for a variant stopped after one."""
    run = tmp_path / "c" / "1-boom"
    shutil.copytree(cli_run[0], run)
    (run / "summary.json").unlink()
    (tmp_path / "c" / "variants.json").write_text("{}")  # what marks a comparison's folder
    last = run / "checkpoints" / "last.json"
    last.write_text(json.dumps({**json.loads(last.read_text()), "step": 1}))
    assert summary_html(run) == (
        f'<p class="muted">No summary.json (the run has not finished; its last checkpoint is '
        f'after 1 step: the compare command that trained it, with --out {tmp_path / "c"}, '
        f'continues it) in this run.</p>')


@pytest.mark.parametrize("last", [None, "{", '{"step": "three"}'])
def test_an_unfinished_run_whose_last_checkpoint_is_unreadable_says_only_that(cli_run, tmp_path,
                                                                              last):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "summary.json").unlink()
    if last is None:
        (run / "checkpoints" / "last.json").unlink()
    else:
        (run / "checkpoints" / "last.json").write_text(last)
    assert summary_html(run) == ('<p class="muted">No summary.json (the run has not finished) '
                                 'in this run.</p>')


def test_a_run_stopped_before_its_first_row_has_a_report_that_says_so(cli_run, tmp_path):
    """An empty metrics.jsonl: nothing to draw and nothing to read (reading it raised an
    IndexError)."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "metrics.jsonl").write_text("")
    page = build_report(run)
    assert '<p class="muted">No metrics rows to draw in this run.</p>' in page
    assert '<p class="muted">No metrics rows to read in this run.</p>' in page


@pytest.mark.parametrize("diag", [None, 3])
def test_a_config_json_without_a_diag_table_draws_the_curves_on_the_default_scale(
        cli_run, tmp_path, diag):
    """Its log_scale is the default's (linear), as a [diag] that says so draws them."""
    pages = {}
    for name, table in (("plain", {"log_scale": False}), ("other", diag)):
        run = tmp_path / name / "run"  # (the figure's title names the folder)
        shutil.copytree(cli_run[0], run)
        config = json.loads((run / "config.json").read_text())
        config["config"]["diag"] = table
        if table is None:
            del config["config"]["diag"]
        (run / "config.json").write_text(json.dumps(config))
        pages[name] = re.search(r'<section id="curves">.*?</section>', build_report(run)).group()
    assert pages["other"] == pages["plain"] and pages["plain"].count("<img") == 2


def test_a_folder_without_config_json_is_no_run_to_report(tmp_path):
    with pytest.raises(MiniGPTError) as info:
        build_report(tmp_path)
    assert str(info.value) == f"{tmp_path} is not a run folder (no config.json)"


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_finished_run_trained_on_and_stopped_has_no_summary_of_its_old_end(small_text,
                                                                           tmp_path,
                                                                           monkeypatch):
    """Resumed with more steps, the run's summary.json of the end it trains past goes as the
    first new step begins: stopped again, its report says where it stopped, not the old end's
    figures. A resume with nothing to train, stopped in its final evaluation, keeps it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"mine": 1}')  # a new run's folder: not its to delete
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(small_text, steps=6, eval_every=3, log_every=1), run,
              progress=False, probes=[CrashAt(2)])
    assert (run / "summary.json").read_text() == '{"mine": 1}'
    train(resume_config(run), run, resume=True, progress=False)
    assert "final_val_loss" in (run / "summary.json").read_text()
    longer = resume_config(run)
    longer.train.steps = 20
    same = resume_config(run)  # nothing to train: the end stands
    with pytest.raises(KeyboardInterrupt), monkeypatch.context() as m:  # stopped at its final
        m.setattr(minigpt.trainer, "split_loss", interrupted)  # evaluation, say
        train(same, run, resume=True, progress=False)
    assert (run / "summary.json").exists()
    with pytest.raises(KeyboardInterrupt):
        train(longer, run, resume=True, progress=False, probes=[CrashAt(9)])
    assert not (run / "summary.json").exists()
    assert "the run has not finished; its last checkpoint is after" in build_report(run)


def test_a_run_without_a_best_checkpoint_is_reported_without_its_graph(cli_run, tmp_path,
                                                                      capsys):
    """A run gone NaN before its first evaluation has no best checkpoint: its curve, which the
    report is there to read, is still read and drawn."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    for best in (run / "checkpoints").glob("best*"):
        best.unlink()
    (run / "graph.svg").unlink(missing_ok=True)
    r = in_process(capsys, "report", "--run", str(run))
    assert r.returncode == 0, r.stderr
    assert f"warning: no 'best' checkpoint in {run / 'checkpoints'} (it has a 'last' one); the " \
           "report will have no graph" in r.stderr  # (a warning, not "minigpt: ...")
    assert "Reading the curve" in (run / "report.html").read_text()


def test_a_report_says_its_rows_left_out_damaged_lines(cli_run, tmp_path):
    """The terminal's warning is gone by the time the page is read: the page says it too (the
    reading's best may then not be the checkpoint's)."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    assert "damaged line" not in build_report(run)
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-20])  # the last line torn, as a crash leaves it
    assert "metrics.jsonl has 1 damaged line(s) (a crash tears the last): the reading and the " \
        "curves leave them out." in build_report(run)


def test_the_report_draws_the_curves_again_from_the_rows(cli_run, tmp_path):
    """The run's loss.png is drawn at its last evaluation: a run that a NaN stopped later
    showed the curve without its last rows. The page draws them from the rows, and writes
    nothing into the run folder (which may be read-only)."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    drawn = (run / "loss.png").read_bytes()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    with open(run / "metrics.jsonl", "a") as f:  # a row after the last drawing
        f.write(json.dumps({**last, "step": last["step"] + 1, "train_loss": 9.0}) + "\n")
    page = build_report(run)
    assert (run / "loss.png").read_bytes() == drawn  # (the run's own, as it was)
    plot_run_curves(run)  # the oracle: the curves of the rows as they are now
    now = base64.b64encode((run / "loss.png").read_bytes()).decode("ascii")
    assert (run / "loss.png").read_bytes() != drawn and f"base64,{now}" in page


def test_report_shows_a_sample_s_controls_and_first_line_break(cli_run, tmp_path):
    """A young BPE model samples control bytes (ESC among them), which HTML does not allow;
    and a <pre>'s first line break is dropped by HTML, hiding a prompt that is one."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    (run / "samples.jsonl").write_text(json.dumps({"step": 0, "text": "\nA\x1b[2J\x07\tb"}))
    page = build_report(run)
    assert "<pre>\n\nA␛[2J␇\tb</pre>" in page and "\x1b" not in page
    assert visible("a\x1b\r\n\t\x7f\x00") == "a␛\r\n\t␡␀"  # (CRLF text shows as it is)
    assert visible("ab\u202ecd\x94") == "ab<U+202E>cd<U+0094>"  # (which reorder, or hide)


def test_the_gradflow_section_counts_the_probes_with_flags(tmp_path):
    """Three probes as the recorder writes them, two flagging nothing and one a parameter: by
    hand, 3 probes and 1 with flags."""
    (tmp_path / "gradflow.png").write_bytes(b"a picture")
    rows = [{"step": 0, "flagged": {}},
            {"step": 10, "flagged": {"blocks.0.attn.Wk.bias": ["vanishing"]}},
            {"step": 20, "flagged": {}}]
    (tmp_path / "gradflow.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "<p>3 probes; 1 with flagged parameters.</p>" in gradflow_html(tmp_path)


def test_the_attention_section_shows_the_first_and_the_last_snapshot(tmp_path):
    """Ten snapshots, steps 0 to 1,125 every 125 (step-1000 sorts before step-375 as text):
    the four shown are the first, the last by step, and two evenly between (every third)."""
    (tmp_path / "attention").mkdir()
    for step in range(0, 1250, 125):
        (tmp_path / "attention" / f"step-{step}.png").write_bytes(b"a picture")
    shown = re.findall(r"<h3>(step-\d+)</h3>", attention_html(tmp_path))
    assert shown == ["step-0", "step-375", "step-750", "step-1125"]


def test_the_attention_section_spaces_its_snapshots_to_the_nearest(tmp_path):
    """Six snapshots, four shown: at positions 0, 5/3, 10/3 and 5, to the nearest, 0 2 3 5."""
    (tmp_path / "attention").mkdir()
    for step in range(6):
        (tmp_path / "attention" / f"step-{step}.png").write_bytes(b"a picture")
    shown = re.findall(r"<h3>(step-\d+)</h3>", attention_html(tmp_path))
    assert shown == ["step-0", "step-2", "step-3", "step-5"]


def test_the_reading_section_escapes_each_finding_and_notes_damaged_lines():
    found = [Finding(3, "spikes <x>", "loss > 4 & <b>rising</b>")]
    page = reading_html(found)
    assert "<li><b>spikes &lt;x&gt;</b>: loss &gt; 4 &amp; &lt;b&gt;rising&lt;/b&gt;</li>" in page
    assert "damaged" not in page and "metrics.jsonl has 2 damaged" in reading_html(found, 2)


def test_the_graph_section_embeds_the_svg_before_the_png(tmp_path):
    (tmp_path / "graph.png").write_bytes(b"a png")
    assert 'src="data:image/png;base64,' in graph_html(tmp_path)
    (tmp_path / "graph.svg").write_bytes(b"<svg/>")
    svg = base64.b64encode(b"<svg/>").decode("ascii")
    assert f'src="data:image/svg+xml;base64,{svg}"' in graph_html(tmp_path)


def test_the_curves_section_embeds_both_the_loss_and_the_lr_figure(tmp_path):
    """The section draws loss.png and lr.png from the rows: two embedded PNGs, by their names
    (html.parser reads the img tags)."""
    rows = [{"step": s, "train_loss": 4 - s / 10, "lr": 1e-3, "time_s": s / 10} for s in range(5)]
    imgs = []
    parser = html.parser.HTMLParser()
    parser.handle_starttag = lambda tag, attrs: imgs.append(dict(attrs)) if tag == "img" else 0
    parser.feed(curves_html(tmp_path, rows, []))
    assert [i["alt"] for i in imgs] == ["loss.png", "lr.png"]
    assert all(i["src"].startswith("data:image/png;base64,iVBOR") for i in imgs)


def test_the_samples_section_shows_a_samples_markup_as_text(tmp_path):
    """A sample is the model's text, markup and all: html.parser finds only the section's own
    tags, and the sample back as text (a 20-step model's samples rarely hold a whole tag)."""
    text = '<script>alert(1)</script> & <b onclick="x">'
    (tmp_path / "samples.jsonl").write_text(json.dumps({"step": 5, "text": text}) + "\n")
    tags, data = [], []
    parser = html.parser.HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)
    parser.handle_data = data.append
    parser.feed(samples_html(tmp_path))
    assert tags == ["h3", "pre"] and "".join(data) == f"step 5\n{text}"


def test_report_escapes_what_the_run_produced(tmp_path, monkeypatch):
    evil = "<script>alert(1)</script></textarea><img src=x onerror=alert(2)>"
    text = tmp_path / evil.replace("/", "|") / "corpus.txt"  # in the path, config.json shows it
    text.parent.mkdir()
    text.write_text((evil + "\n") * 300)
    cfg = tiny_config(text, steps=20, eval_every=10, sample_every=10)
    out = tmp_path / "run"
    train(cfg, out, probes=standard_probes(cfg), progress=False)
    samples = [json.loads(line)["text"] for line in (out / "samples.jsonl").open()]
    assert any("<" in s for s in samples)  # the samples carry markup of their own
    page = build_report(out)
    assert "<script" not in page and "</textarea" not in page and "<img src=x" not in page
    assert page.count("<pre>") == len(samples) + 1  # the samples and the configuration only
    assert "&lt;script&gt;alert(1)&lt;" in page  # shown as text, from config.json's path
    monkeypatch.chdir(out)  # report --run . names the folder, not ""
    assert "<title>minigpt run run</title>" in build_report(".")
    marked = out.rename(tmp_path / "<b>&")  # the folder's own name, markup too
    assert "<title>minigpt run &lt;b&gt;&amp;</title>" in build_report(marked)


@pytest.mark.skipif(sys.platform != "linux", reason="a file name of any bytes: Linux's")
def test_a_report_of_a_run_on_a_text_whose_name_is_not_utf8(cli_run, tmp_path):
    """config.json holds the name as Python does (a lone surrogate, "\\udcff"): the report
    failed with a UnicodeEncodeError traceback writing report.html."""
    text = tmp_path / os.fsdecode(b"caf\xe9.txt")
    shutil.copy(cli_run[2], text)
    out = tmp_path / "run"
    r = run_cli("train", "--text", str(text), *TINY_FLAGS, "--steps", "2", "--eval-every", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "\udce9" in json.loads((out / "config.json").read_text())["config"]["data"]["text"]
    r = run_cli("report", "--run", str(out))
    assert r.returncode == 0, r.stderr
    assert "caf\\udce9.txt" in (out / "report.html").read_text(encoding="utf-8")


def test_report_in_a_real_browser(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop screen
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        headings = page.locator("section h2").all_inner_texts()
        images = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        final = page.locator("#summary td").first.inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        page.set_viewport_size({"width": 400, "height": 800})  # a phone: samples and settings
        narrow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        browser.close()
    assert errors == []
    assert headings == ["Summary", "Loss and learning rate", "Reading the curve",
                        "Gradient flow", "Attention", "Samples", "Computation graph",
                        "Configuration"]
    assert len(images) >= 5 and all(w > 0 for w in images)  # every image decoded
    assert overflow <= 0 and narrow <= 0  # no sideways scrolling on a laptop, nor a phone
    summary = json.loads((report.parent / "summary.json").read_text())
    assert final == f"{summary['final_val_loss']:.4f}"
    read_png(tmp_path / "report.png")


def test_autograd_command_shows_the_lessons_example(capsys):
    said = cli(capsys, "autograd")
    assert "value       y = 11" in said and "dy/dx = 7" in said
    assert "PowBackward0" in said and "x.grad = 3 + 4 = 7" in said
    assert "df/dx = 4" in cli(capsys, "autograd", "--expr", "x*y + sin(x)", "--at", "x=0,y=3")


@pytest.mark.parametrize("args, message", [
    (["attention", "--run", "{run}", "--text", "R" * 33, "--device=cpu"], "1 to 32 characters"),
    (["gradflow", "--run", "{run}", "--device", "meta"], "unknown device 'meta'"),
    (["gradflow", "--run", "{run}", "--lr", "nan"], "--lr must be a number from 0 to 3.4e38"),
    (["gradflow", "--run", "{run}", "--lr", "-1"], "--lr must be a number from 0 to 3.4e38"),
    (["gradflow", "--run", "{run}", "--lr", "1e308"], "got 1e+308"),  # (SGD's traceback)
    (["attention", "--run", "{run}", "--device", "xpu"], "unknown device 'xpu'"),
    (["autograd", "--at", "x2"], "--at takes NAME=VALUE pairs"),
    (["autograd", "--at", "=2"], "--at takes NAME=VALUE pairs"),  # (a value without a name)
    # a pair whose value is no number is told so, as explain(expr, {"x": "pi"}) tells it (it
    # was 'takes NAME=VALUE pairs', of a pair; 0x10, which --expr reads as 16, likewise)
    (["autograd", "--at", "x=pi"], "the value of x must be a number, got 'pi'"),
    (["autograd", "--at", "y=1,x=0x10"], "the value of x must be a number, got '0x10'"),
    (["autograd", "--expr", "open('f')"], "'open' is not allowed"),
    (["autograd", "--expr", "x.real"], "attribute access"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli_run, args, message, capsys):
    out, _, _ = cli_run
    assert message in one_line_error(capsys, [a.format(run=out) for a in args])


def test_a_gpu_this_machine_lacks_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = one_line_error(capsys, ["sample", "--run", "x", "--device", "cuda:2"])
    assert "this machine has 2 CUDA GPU(s): cuda:0 to cuda:1" in line


@pytest.mark.parametrize("name, said", [
    ("cuda", "device 'cuda' asked for, but this PyTorch sees no CUDA GPU"),  # (not '0 GPUs')
    ("cuda:1", "device 'cuda:1' asked for, but this PyTorch sees no CUDA GPU"),
    ("mps", "device 'mps' asked for, but MPS is not available here"),
])
def test_a_device_this_pytorch_cannot_use_is_one_line(name, said, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert said in one_line_error(capsys, ["sample", "--run", "x", "--device", name])


def test_graph_command_draws_the_run(cli_run, tmp_path, capsys):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    cli(capsys, "graph", "--run", str(cli_run[0]), "--collapse", "--out", str(tmp_path / "g"))
    read_png(tmp_path / "g.png")
    svg = (tmp_path / "g.svg").read_text()
    assert "lm_head" in svg and "blocks.0" in svg and "token_emb" in svg
    # collapsed to the blocks: the block one node of its own parameters (counted here from the
    # checkpoint), none of its modules drawn (the names alone held for a --collapse ignored)
    block = minigpt.load_model(cli_run[0], "best", "cpu")[0].blocks[0]
    dot = (tmp_path / "g.dot").read_text()
    assert f'label="blocks.0\\n{sum(p.numel() for p in block.parameters()):,} params' in dot
    assert "blocks.0.attn" not in dot


def test_graph_of_a_run_goes_into_its_folder_collapsed_to_blocks(cli_run, tmp_path, capsys,
                                                                  monkeypatch):
    """Without --out, a run's graph is the run folder's graph.* (not the working folder's), and
    --collapse without --depth is depth 1, the blocks: the same drawing as --depth 1 asks for."""
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    run = tmp_path / "run"  # (a copy: the shared run folder keeps no graph of this test's)
    shutil.copytree(cli_run[0], run)
    monkeypatch.chdir(tmp_path)
    cli(capsys, "graph", "--run", str(run), "--collapse")
    cli(capsys, "graph", "--run", str(run), "--collapse", "--depth", "1", "--out", "d1")
    assert not (tmp_path / "graph.dot").exists()
    assert (run / "graph.dot").read_text() == (tmp_path / "d1.dot").read_text()


def test_graph_command_without_graphviz_writes_dot_and_says_how(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"  # a PATH with python but no dot
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    r = in_process(capsys, "graph", "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1  # (0 was: the pictures are not made)
    assert f"dot is not installed: wrote only {tmp_path / 'g.dot'}" in r.stderr
    assert "install Graphviz" in r.stderr and "apt install graphviz" in r.stderr
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert not (tmp_path / "g.png").exists()
    # a fresh model is seeded, so its gradient norms repeat; "h.svg" names h.dot, not h.svg.dot
    r = in_process(capsys, "graph", "--out", str(tmp_path / "h.svg"))
    assert r.returncode == 2, r.stderr
    assert (tmp_path / "h.dot").read_text() == (tmp_path / "g.dot").read_text()
    for folder in (f"{tmp_path / 'new'}/", str(tmp_path / "bin")):  # a folder: graph.* inside it
        assert in_process(capsys, "graph", "--out", folder).returncode == 2
        assert (Path(folder) / "graph.dot").read_text() == (tmp_path / "g.dot").read_text()


def test_a_report_without_graphviz_says_so_and_names_no_file_it_removed(cli_run, tmp_path,
                                                                        capsys, monkeypatch):
    """The report draws its graph in a temporary folder: dot's absence was said as 'wrote only
    /tmp/tmpXXXX/graph.dot ... open the .dot file', a file gone when the command ended."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    bin_dir = tmp_path / "bin"  # a PATH with python but no dot
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    r = in_process(capsys, "report", "--run", str(run))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("warning: Graphviz's dot is not installed (apt install graphviz / brew "
                        "install graphviz); the report will have no graph\n")
    assert "computation graph (graph.svg" in (run / "report.html").read_text()  # (missing)


def test_a_summary_whose_losses_went_nan_is_reported_not_called_damaged(tmp_path):
    """summary.json writes a NaN or infinite loss as null (JSON has no NaN): the report says
    nan, as the run's own last line does."""
    summary = dict(final_val_loss=None, final_val_bpb=None, best_val_loss=None, steps=40,
                   train_s=1.5, tokens_per_s=1000, params=12345)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = summary_html(tmp_path)
    assert "readable summary.json" not in html
    assert "<tr><th>final validation loss (whole split)</th><td class=num>nan</td>" in html
    assert "<tr><th>best validation estimate</th><td class=num>nan</td>" in html
    assert "<td class=num>12,345</td>" in html


def test_the_summary_section_shows_each_figure_of_the_run(cli_run):
    """Each row's figure, recomputed from the run: the best estimate is the lowest val_loss in
    metrics.jsonl, the steps one past its last row, the parameters the saved model's; the rest
    are summary.json's, each under its own heading."""
    run = cli_run[0]
    rows = read_jsonl(run / "metrics.jsonl")
    s = json.loads((run / "summary.json").read_text())
    params = sum(p.numel() for p in minigpt.load_model(run, "last")[0].parameters())
    cells = dict(re.findall(r"<tr><th>([^<]*)</th><td class=num>([^<]*)</td>", summary_html(run)))
    assert cells == {
        "final validation loss (whole split)": f"{s['final_val_loss']:.4f}",
        "best validation estimate": f"{min(r['val_loss'] for r in rows if 'val_loss' in r):.4f}",
        "steps": f"{rows[-1]['step'] + 1:,}", "training time": f"{s['train_s']:.1f} s",
        "tokens / s": f"{s['tokens_per_s']:,}", "parameters": f"{params:,}"}


def test_the_samples_section_shows_every_sample_in_step_order(cli_run):
    steps = [r["step"] for r in read_jsonl(cli_run[0] / "samples.jsonl")]
    assert steps == sorted(steps) and len(steps) == 3  # at 0, 20 and the end's 39
    assert re.findall(r"<h3>step (\d+)</h3>", samples_html(cli_run[0])) == [str(s) for s in steps]
