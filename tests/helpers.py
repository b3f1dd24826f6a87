"""What many test files share: the classes of a small store, a split written from given labels,
and the check that a command's error is one line."""
import numpy as np

from data.store import Store

__all__ = ["classes", "write_split", "one_line_error"]


def classes(k: int) -> list[dict]:
    """k classes named c0, c1, ... with mids /m/0, /m/1, ..., as `create_store` takes them."""
    return [{"index": i, "mid": f"/m/{i}", "name": f"c{i}"} for i in range(k)]


def write_split(store: Store, split: str, labels, *, seed: int = 0, rows_per_shard: int = 1024,
                n_frames=None, order: str = "given", clip_ids=None) -> np.ndarray:
    """Write `split` with one clip per entry of `labels` (class indices), ids `<split><i>` unless
    given, random spectrograms of the store's size ([clips, frames, mels] float16, returned), every
    frame valid unless `n_frames` says otherwise."""
    frames, mels = store.features["frames"], store.features["mels"]
    n = len(labels)
    mel = np.random.default_rng(seed).normal(size=(n, frames, mels)).astype(np.float16)
    w = store.writer(split, rows_per_shard=rows_per_shard, order=order)
    w.write(clip_ids if clip_ids is not None else [f"{split}{i}" for i in range(n)],
            [np.asarray(x) for x in labels], mel, np.full(n, frames) if n_frames is None else n_frames)
    w.close()
    return mel


def one_line_error(capsys, main, argv) -> str:
    """Run `main(argv)`; assert exit 2 and a single `error: ...` line on stderr, no traceback;
    return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err
    return lines[0]
