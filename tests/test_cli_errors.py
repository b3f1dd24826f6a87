"""The command-line convention (data/cli.py) on real bad input: one line on stderr, `error:`,
the file named, exit status 2, no traceback, and nothing created."""
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error

from data.cli import InputError, add_list, parser, run
from data.ingest import main as ingest_main
from data.stats import PAPER_BETAS, main as stats_main
from data.synth import main as synth_main


@pytest.fixture
def labels(audioset, tmp_path):
    """Copies of parts of the real label files, broken in the ways a download or an edit breaks them."""
    index = audioset / "class_labels_indices.csv"
    # the first 64 KiB of the real unbalanced_train_segments.csv.gz: a download cut short
    truncated = tmp_path / "unbalanced_train_segments.csv.gz"
    truncated.write_bytes((audioset / "unbalanced_train_segments.csv.gz").read_bytes()[:65536])
    # the first 12 lines of the real eval_segments.csv, line 7 saved in Latin-1
    lines = (audioset / "eval_segments.csv").read_bytes().splitlines(keepends=True)[:12]
    lines[6] = lines[6].replace(b"\"", b"\"caf\xe9,", 1)
    latin1 = tmp_path / "eval_segments.csv"
    latin1.write_bytes(b"".join(lines))
    return index, truncated, latin1


def test_truncated_gzip_is_one_line(labels, capsys):
    index, truncated, _ = labels
    line = one_line_error(capsys, stats_main, ["--segments", str(truncated), "--class-index", str(index)])
    assert line.startswith(f"error: {truncated}: truncated gzip file")


def test_non_utf8_csv_is_one_line_with_the_line_number(labels, capsys):
    index, _, latin1 = labels
    line = one_line_error(capsys, stats_main, ["--segments", str(latin1), "--class-index", str(index)])
    assert line.startswith(f"error: {latin1}:7: not UTF-8 text (byte 0xe9")
    bad_index = latin1.with_name("class_index.csv")
    bad_index.write_bytes(index.read_bytes().replace(b"Speech", b"Sp\xe9ech", 1))
    line = one_line_error(capsys, stats_main, ["--segments", str(latin1), "--class-index", str(bad_index)])
    assert line.startswith(f"error: {bad_index}:2: not UTF-8 text")


def test_missing_file_is_one_line(audioset, tmp_path, capsys):
    line = one_line_error(capsys, stats_main, ["--segments", str(tmp_path / "nope.csv"),
                                       "--class-index", str(audioset / "class_labels_indices.csv")])
    assert str(tmp_path / "nope.csv") in line


def test_bad_manifest_is_one_line(tmp_path, capsys):
    from data.synth import SynthConfig, make_synthetic_store
    store = make_synthetic_store(tmp_path / "s", SynthConfig(clips=30, classes=4, frames=8, mels=8))
    capsys.readouterr()  # the progress bars
    manifest = store.root / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])  # cut short, as by a full disk
    line = one_line_error(capsys, stats_main, ["--store", str(store.root)])
    assert line.startswith(f"error: {manifest}:") and "not valid JSON" in line
    with pytest.raises(Exception, match="not valid JSON"):  # --debug: the traceback instead
        stats_main(["--store", str(store.root), "--debug"])


def _ingest_args(audioset, segments, audio, out, *more):
    return ["--segments", str(segments), "--class-index", str(audioset / "class_labels_indices.csv"),
            "--audio-dir", str(audio), "--store", str(out), "--split", "train", *more]


def test_ingest_bad_label_file_creates_nothing(labels, audioset, tmp_path, capsys):
    _, truncated, _ = labels
    (tmp_path / "audio").mkdir()
    out = tmp_path / "store"
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, truncated, tmp_path / "audio", out))
    assert str(truncated) in line and not out.exists()


def test_ingest_missing_audio_dir_creates_nothing(audioset, tmp_path, capsys):
    segments = tmp_path / "segments.csv"
    segments.write_bytes(b"".join((audioset / "eval_segments.csv").read_bytes().splitlines(keepends=True)[:20]))
    out = tmp_path / "store"
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, tmp_path / "no-audio", out))
    assert line == f"error: {tmp_path / 'no-audio'}: audio directory does not exist"
    assert not out.exists()


def test_ingest_without_any_audio_file_creates_nothing(audioset, tmp_path, capsys):
    segments = tmp_path / "segments.csv"
    segments.write_bytes(b"".join((audioset / "eval_segments.csv").read_bytes().splitlines(keepends=True)[:20]))
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "unrelated.wav").write_bytes(b"")
    out = tmp_path / "store"
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, audio, out))
    assert line.startswith(f"error: {audio}: no audio file for any of the ")
    assert "tried patterns {ytid}.{ext} Y{ytid}.{ext} {ytid}_{start}.{ext} {ytid}_{start_g}.{ext}" in line
    assert f"(e.g. {audio / '--4gqARaEJE.wav'})" in line
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--frames", "--rows-per-shard"])
def test_ingest_zero_sizes_are_refused_before_anything(audioset, tmp_path, capsys, flag):
    (tmp_path / "audio").mkdir()
    out = tmp_path / "store"
    with pytest.raises(SystemExit) as e:  # a usage error is one line too (data/cli.py)
        ingest_main(_ingest_args(audioset, audioset / "eval_segments.csv", tmp_path / "audio", out, flag, "0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [f"error: python -m data.ingest: argument {flag}: must be >= 1, got 0"]
    assert not out.exists()


def test_a_bug_keeps_its_traceback_and_a_bad_input_is_one_line(capsys):
    """The CLI wrapper turns the project's own input errors into one line, not every ValueError:
    a ValueError from the math is a bug, and its traceback stays."""
    def body(error):
        def raise_it(_):
            raise error
        return raise_it

    p = parser(prog="python -m x", description=None)
    assert run(body(InputError("x.csv: row 3: no labels")), p, []) == 2
    assert capsys.readouterr().err == "error: x.csv: row 3: no labels\n"
    with pytest.raises(ValueError, match="shapes differ"):
        run(body(ValueError("shapes differ")), p, [])
    with pytest.raises(InputError):
        run(body(InputError("x.csv")), p, ["--debug"])


def test_ingest_config_refuses_zero_sizes(tmp_path):
    from data.ingest import IngestConfig
    with pytest.raises(InputError, match="rows_per_shard: must be an integer >= 1, got 0"):
        IngestConfig(["s.csv"], "ci.csv", "audio", str(tmp_path / "store"), "train", rows_per_shard=0)
    with pytest.raises(InputError, match="frames: must be an integer >= 1, got 0"):
        IngestConfig(["s.csv"], "ci.csv", "audio", str(tmp_path / "store"), "train", frames=0)
    with pytest.raises(InputError, match="split: '../x' is not a plain name"):
        IngestConfig(["s.csv"], "ci.csv", "audio", str(tmp_path / "store"), "../x")


def test_ingest_refuses_a_directory_that_holds_data(audioset, tmp_path, capsys):
    """A store whose manifest was lost: its shards are not written over."""
    import soundfile as sf
    import numpy as np
    segments = tmp_path / "segments.csv"
    segments.write_bytes(b"".join((audioset / "eval_segments.csv").read_bytes().splitlines(keepends=True)[:20]))
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "--4gqARaEJE.wav", np.zeros(16000, np.float32), 16000)
    out = tmp_path / "store"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-00000.parquet").write_bytes(b"someone's data")
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, audio, out))
    assert line.startswith(f"error: {out}: not empty") and "has no manifest.json" in line
    assert sorted(p.name for p in out.rglob("*")) == ["part-00000.parquet", "train"]
    assert (out / "train" / "part-00000.parquet").read_bytes() == b"someone's data"


def test_synth_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        synth_main(["--store", str(tmp_path / "s"), "--clips", "0"])
    assert e.value.code == 2 and "argument --clips: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    out = tmp_path / "s"
    assert synth_main(["--store", str(out), "--clips", "20", "--classes", "4", "--frames", "8", "--mels", "8",
                       "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["store"] == str(out) and printed["splits"]["train"] >= 20
    assert set(printed["splits"]) == {"train", "valid", "eval_public", "eval_internal"}
    (out / "manifest.json").unlink()
    before = sorted(Path(p).name for p in out.rglob("*"))
    line = one_line_error(capsys, synth_main, ["--store", str(out), "--clips", "20", "--classes", "4"])
    assert line.startswith(f"error: {out}: not empty")
    assert sorted(Path(p).name for p in out.rglob("*")) == before
    line = one_line_error(capsys, synth_main, ["--store", str(tmp_path / "t"), "--classes", "2"])
    assert "synth.head_classes: 3 is not in [0, classes = 2]" in line and not (tmp_path / "t").exists()


def test_synth_prints_a_readable_summary_and_needs_a_store(tmp_path, capsys):
    out = tmp_path / "s"
    assert synth_main(["--store", str(out), "--clips", "20", "--classes", "4", "--frames", "8", "--mels", "8"]) == 0
    printed, err = capsys.readouterr()
    assert (out / "manifest.json").is_file() and "warning" not in err
    assert printed.startswith(f"{out}: synthetic store, 4 classes; train ") and "eval_internal" in printed
    with pytest.raises(SystemExit) as e:
        synth_main(["--clips", "20"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith("the following arguments are required: --store")
    with pytest.raises(SystemExit):
        synth_main(["--store", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert "unrecognized arguments: --out" in capsys.readouterr().err


def test_an_interrupted_synthetic_build_leaves_no_store(tmp_path, monkeypatch):
    """The store is built aside and renamed into place whole: a build stopped halfway (SIGTERM,
    Ctrl-C) leaves nothing at the store's path, and the next run builds it."""
    import data.synth as synth
    real, calls = synth._write_split, []

    def stop_after_train(store, name, *args, **kw):
        if name != "train":
            raise KeyboardInterrupt
        calls.append(name)
        return real(store, name, *args, **kw)

    monkeypatch.setattr(synth, "_write_split", stop_after_train)
    cfg = synth.SynthConfig(clips=20, classes=4, frames=8, mels=8)
    with pytest.raises(KeyboardInterrupt):
        synth.make_synthetic_store(tmp_path / "store", cfg)
    assert calls == ["train"] and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "_write_split", real)
    assert synth.make_synthetic_store(tmp_path / "store", cfg).splits == ["train", "valid", "eval_public", "eval_internal"]


def test_list_flags_take_either_style():
    p = parser("x", None)
    add_list(p, "--x", default=("d",))
    add_list(p, "--n", type=int)
    assert p.parse_args(["--x", "a", "b"]).x == p.parse_args(["--x", "a", "--x", "b"]).x == ["a", "b"]
    assert p.parse_args(["--x", "a"]).x == ["a"]  # the default is replaced, not extended
    assert p.parse_args([]).x == ("d",) and p.parse_args([]).n is None
    assert p.parse_args(["--n", "1", "--n", "2", "3"]).n == [1, 2, 3]


def test_stats_lists_either_style(synth_store, audioset, tmp_path, capsys):
    def stats(*argv):
        assert stats_main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    store = str(synth_store.root)
    spaced = stats("--store", store, "--betas", "0", "0.5", "1")
    assert [r["beta"] for r in spaced["oversampled"]] == [0.0, 0.5, 1.0]
    assert stats("--store", store, "--betas", "0", "--betas", "0.5", "1")["oversampled"] == spaced["oversampled"]
    assert [r["beta"] for r in stats("--store", store)["oversampled"]] == list(PAPER_BETAS)
    rows = (audioset / "eval_segments.csv").read_text().splitlines()
    (tmp_path / "a.csv").write_text("\n".join(rows[:40]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(rows[:3] + rows[40:80]) + "\n")
    index = str(audioset / "class_labels_indices.csv")
    both = stats("--segments", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--class-index", index)
    assert both["clips"] == 40 - 3 + 40
    assert stats("--segments", str(tmp_path / "a.csv"), "--segments", str(tmp_path / "b.csv"),
                 "--class-index", index)["oversampled"] == both["oversampled"]


@pytest.mark.parametrize("betas, why", [(["0,1"], "'0,1' is not a number (betas are separated by spaces"),
                                        (["0", "-1"], "must be finite and >= 0, got -1"),
                                        (["nan"], "must be finite and >= 0, got nan")])
def test_stats_bad_betas_is_one_line(synth_store, capsys, betas, why):
    with pytest.raises(SystemExit) as e:
        stats_main(["--store", str(synth_store.root), "--betas", *betas])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: python -m data.stats: argument --betas: ") and why in err[0]


def test_ingest_into_a_store_of_other_frames_adopts_them_or_says_what_it_has(audioset, tmp_path, capsys):
    """The store was made with --frames 300: an ingest without --frames adopts them; one with
    --frames 1024 is told what the store has."""
    import numpy as np
    import soundfile as sf
    from data.features import store_features
    from data.labels import read_class_index
    from data.store import create_store, open_store
    segments = tmp_path / "segments.csv"
    segments.write_bytes(b"".join((audioset / "eval_segments.csv").read_bytes().splitlines(keepends=True)[:20]))
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "--4gqARaEJE.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    ci = read_class_index(audioset / "class_labels_indices.csv")
    out = tmp_path / "store"
    create_store(out, [{"index": i, "mid": m, "name": n} for i, (m, n) in enumerate(zip(ci.mids, ci.names))],
                 store_features(300))
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, audio, out, "--frames", "1024"))
    assert line == (f"error: {out}: the store has 300 frames a clip, this ingest 1024: omit --frames to adopt the "
                    "store's, or pass --frames 300")
    assert ingest_main(_ingest_args(audioset, segments, audio, out)) == 0
    store = open_store(out)
    assert store.frames == 300 and store.clip_ids("train") == ["--4gqARaEJE"]


def test_per_class_counts_are_printed(synth_store, capsys):
    assert stats_main(["--store", str(synth_store.root), "--split", "train", "--per-class"]) == 0
    text = capsys.readouterr().out
    counts = synth_store.class_counts("train")
    rarest = int(np.argmin(counts))
    table = text.split("index     clips")[1].splitlines()[1:]
    assert len(table) == synth_store.n_classes and table[0].split()[:2] == [str(rarest), f"{counts.min():,}"]
    assert stats_main(["--store", str(synth_store.root), "--split", "valid", "--per-class", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["per_class"]
    assert [r["clips"] for r in rows] == synth_store.class_counts("valid").tolist()
    assert rows[0]["name"] == synth_store.classes[0] and rows[0]["prior"] == pytest.approx(
        rows[0]["clips"] / synth_store.split_info("valid")["clips"])


def _clips(audio, names, rate=16000):
    """One second of noise per name, as WAV files in `audio`."""
    import soundfile as sf
    audio.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        sf.write(audio / f"{name}.wav", (0.1 * np.random.default_rng(k).standard_normal(rate)).astype(np.float32), rate)


def test_unknown_labels_are_named_with_counts_and_can_be_refused(audioset, tmp_path, capsys):
    """A misspelt MID is dropped with a warning naming each unknown label and its count;
    --unknown-labels error refuses the file instead, before a store is made."""
    _clips(tmp_path / "audio", ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"])
    segments = tmp_path / "segments.csv"
    segments.write_text('aaaaaaaaaaa, 0, 10, "/m/09x0r,/m/09x0rr"\nbbbbbbbbbbb, 0, 10, "/m/09x0rr"\n'
                        'ccccccccccc, 0, 10, "/m/04rlf,/m/zzz"\n')
    assert ingest_main(_ingest_args(audioset, segments, tmp_path / "audio", tmp_path / "store")) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "unknown label" in line]
    assert warning == [f"warning: {segments}: labels dropped from their clips: 2 unknown label(s): /m/09x0rr (2x), "
                       "/m/zzz (1x); 1 clip(s) left without a known label skipped (see ingest_report.json); "
                       "--unknown-labels error refuses them"]
    from data.store import open_store
    assert sorted(open_store(tmp_path / "store").clip_ids("train")) == ["aaaaaaaaaaa", "ccccccccccc"]
    out = tmp_path / "strict"
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, tmp_path / "audio", out,
                                                    "--unknown-labels", "error"))
    assert line == f"error: {segments}: 2 unknown label(s): /m/09x0rr (2x), /m/zzz (1x) (--unknown-labels error)"
    assert not out.exists()


def test_a_segment_csv_of_display_names_names_them(audioset, tmp_path, capsys):
    """Labels written as display names instead of MIDs: the error names them, with their counts,
    and says what they are."""
    _clips(tmp_path / "audio", ["aaaaaaaaaaa", "bbbbbbbbbbb"])
    segments = tmp_path / "segments.csv"
    segments.write_text('aaaaaaaaaaa, 0, 10, "Speech"\nbbbbbbbbbbb, 0, 10, "Speech,Music"\n')
    out = tmp_path / "store"
    line = one_line_error(capsys, ingest_main, _ingest_args(audioset, segments, tmp_path / "audio", out))
    assert line == (f"error: {segments}: no clip with a known label (2 rows left out); 2 unknown label(s): "
                    "Speech (2x), Music (1x); 2 of them are display names of the class index, where the label files "
                    "list MIDs (Speech is /m/09x0r)")
    assert not out.exists()


def _ingest_process(audioset, segments, audio, out, env=None, *more):
    """`python -m data.ingest` in its own process (its own Ray, its own signals: SIGINT as a
    terminal gives it, also when pytest runs in the background, where SIGINT is ignored and a
    child would inherit that), torch on one thread as in a Ray task (tiny clips: faster, and
    immune to a busy machine)."""
    import os
    import signal
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "data.ingest", *_ingest_args(audioset, segments, audio, out, *more)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_ray_that_does_not_start_is_one_line_and_leaves_no_store(audioset, tmp_path):
    """An ingest of more than 256 clips runs on Ray: when Ray cannot start (here its temporary
    directory cannot be made; under load, a node that times out), the error is one line naming
    Ray, exit 2, and the new store is not created (Ray starts before the first write)."""
    names = [f"clip{k:07d}" for k in range(257)]
    _clips(tmp_path / "audio", names, rate=1600)
    segments = tmp_path / "segments.csv"
    segments.write_text("".join(f'{n}, 0, 10, "/m/09x0r"\n' for n in names))
    (tmp_path / "a_file").write_text("")
    proc = _ingest_process(audioset, segments, tmp_path / "audio", tmp_path / "store",
                           {"RAY_TMPDIR": str(tmp_path / "a_file" / "ray")})
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: Ray did not start for this ingest of 257 clips (more than 256 clips run as Ray "
                               "tasks): NotADirectoryError") and "nothing was written" in lines[0]
    assert not (tmp_path / "store").exists()


def test_ctrl_c_during_an_ingest_is_one_line_and_the_rerun_resumes(audioset, tmp_path, capsys, one_thread):
    """SIGINT while clips are decoded: one line saying what was kept and how to resume, exit 130,
    no traceback; the same command then finishes, reusing the shards written before."""
    import signal
    import time
    import soundfile as sf
    names = [f"long{k:07d}" for k in range(24)]
    (tmp_path / "audio").mkdir()
    for k, name in enumerate(names):
        wave = 0.1 * np.random.default_rng(k).standard_normal(48000 * 3)
        sf.write(tmp_path / "audio" / f"{name}.wav", wave.astype(np.float32), 48000, subtype="PCM_16")
    segments = tmp_path / "segments.csv"
    segments.write_text("".join(f'{n}, 0, 10, "/m/09x0r"\n' for n in names))
    out = tmp_path / "store"
    journal = out / "ingest_journal_train.jsonl"
    more = ["--rows-per-shard", "1", "--frames", "200"]
    proc = _ingest_process(audioset, segments, tmp_path / "audio", out, None, *more)
    deadline = time.time() + 120
    while not (journal.exists() and journal.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (f"interrupted: {out} keeps what was finished (journaled); "
                                            "run the same command again to resume")
    assert ingest_main(_ingest_args(audioset, segments, tmp_path / "audio", out, *more, "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ingested"] == 24 and 2 <= printed["shards_reused"] < 24
