"""A dataset's records as a corpus for minigpt prepare: one text field of each, streamed.

    minigpt prepare --dataset roneneldan/TinyStories --out data/stories --tokenizer bpe
    minigpt prepare --dataset 'shards/*.parquet' --out data/local    # or .jsonl .json .arrow

`--dataset` names a Hugging Face dataset (loaded with datasets.load_dataset, streaming, so
nothing is downloaded or held whole), or local files: a file, a folder or a glob of parquet,
JSON lines (or JSON) or arrow files, read by the datasets builder of their kind. Each record's
text field is a document; documents follow one another with a line break between them, so the
corpus is the text of a file holding them so joined, and prepare's passes (minigpt.corpus)
read it as they read files: each pass streams the records again, in the same order.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path

from minigpt.corpus import chunk_text, file_stamps, find_sources
from minigpt.errors import MiniGPTError

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
SEPARATOR = "\n"  # between two documents


def local_files(name: str, exclude: Path | None = None) -> list[Path]:
    """The data files `name` names if it is a local file, folder or glob (find_sources; in a
    folder, only the files of a kind in BUILDERS), or [] for a dataset on the hub. A name that
    ends in such a suffix is a local path, found or not, never a hub dataset."""
    if not (Path(name).expanduser().exists() or glob.has_magic(name)
            or Path(name).suffix in BUILDERS):
        return []
    found = find_sources(name, exclude)
    files = [p for p in found if p.suffix in BUILDERS]
    kinds = {BUILDERS[p.suffix] for p in files}
    if len(kinds) != 1:
        what = "mixes " + " and ".join(sorted(kinds)) if kinds else "has no"
        text = " (text files go to --text)" if not kinds and found else ""
        raise MiniGPTError(f"{name!r} {what} data files: give files of one kind "
                           f"({', '.join(BUILDERS)}), e.g. 'data/*.parquet'{text}")
    if not any(p.stat().st_size for p in files):  # datasets' json reader: StopIteration
        raise MiniGPTError(f"empty corpus: the {len(files)} file(s) hold no text")
    return files


class Records:
    """A dataset's records as a corpus (the counterpart of minigpt.corpus.Files): the text
    field of each record, from a hub dataset (name, config, split) or local data files,
    streamed anew by every pass. Errors of the dataset are one line (MiniGPTError)."""

    unit = "char"  # the bars count characters read
    size = None  # unknown until the scan has counted the characters

    def __init__(self, name: str, config: str | None = None, split: str = "train",
                 field: str = "text", exclude: Path | None = None):
        self.name, self.config, self.split, self.field = name, config, split, field
        self.files = local_files(name, exclude)
        if self.files and config:  # (the builder of their kind would take it and ignore it)
            raise MiniGPTError(f"--dataset-config {config} names a configuration of a dataset "
                               f"on the hub; local data files have none")

    def texts(self) -> Iterator[str]:
        """Each record's text field, in the dataset's order."""
        try:
            import datasets  # an optional dependency, imported on first use
            import huggingface_hub  # (datasets' own dependency)
        except ImportError:
            raise MiniGPTError("--dataset needs the datasets package: "
                               "pip install 'minigpt-loop[datasets]'") from None
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors: our one line
        huggingface_hub.utils.logging.set_verbosity_error()  # (offline: a retry line a second)
        if self.files:  # local files: the builder for their kind
            builder, options = BUILDERS[self.files[0].suffix], {
                "data_files": [str(p) for p in self.files]}
        else:  # a dataset on the hub, by name
            builder, options = self.name, {}
        try:
            stream = datasets.load_dataset(builder, self.config, split=self.split,
                                           streaming=True, **options)
            for i, record in enumerate(stream):
                if self.field not in record:
                    raise MiniGPTError(f"{self} have no field {self.field!r} (its fields: "
                                       f"{', '.join(record)}); choose one with --text-field")
                text = record[self.field]
                if not isinstance(text, str):
                    what = ("missing or null" if text is None
                            else f"{type(text).__name__}, not text")
                    raise MiniGPTError(f"record {i} of {self.label()}: its {self.field!r} is "
                                       f"{what}")
                yield text
        except MiniGPTError:
            raise
        except Exception as e:  # not found, no such split or config, a damaged file, ...
            # its first line only: datasets' errors run to several
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            local = "" if self.files else f"; nor is {self.name!r} a local file or folder"
            raise MiniGPTError(f"cannot read {self.label()}: {first}{local}") from None

    def chunks(self, chunk_chars: int, on_progress: Callable[[int], object]) -> Iterator[str]:
        """The documents, a line break between two, in chunks (minigpt.corpus.chunk_text);
        on_progress(n) hears of every chunk's n characters."""
        for chunk in chunk_text(self._pieces(chunk_chars), chunk_chars):
            on_progress(len(chunk))
            yield chunk

    def _pieces(self, chunk_chars: int) -> Iterator[str]:
        """The documents joined, in pieces of at most chunk_chars characters: records are
        gathered until they fill one (so short records cost no chunk each), a long one cut."""
        batch, size = [], 0
        for i, text in enumerate(self.texts()):
            batch.append(SEPARATOR + text if i else text)
            size += len(batch[-1])
            if size >= chunk_chars:
                yield from _cut("".join(batch), chunk_chars)
                batch, size = [], 0
        yield from _cut("".join(batch), chunk_chars)

    def settings(self) -> dict:
        """What, changed, makes an unfinished prepare of these records another prepare."""
        return {"sources": self.describe(), "files": file_stamps(self.files)}

    def describe(self) -> dict:
        """The index's `sources`: the dataset, its config, split and field, the local files."""
        return {"dataset": self.name, "config": self.config, "split": self.split,
                "field": self.field, "files": [str(p) for p in self.files]}

    def label(self) -> str:
        """The dataset in words: its name, split and config."""
        config = f", config {self.config}" if self.config else ""
        return f"dataset {self.name!r} (split {self.split}{config})"

    def __str__(self) -> str:
        return f"the records of {self.label()}"


def _cut(text: str, chunk_chars: int) -> Iterator[str]:
    """text in pieces of at most chunk_chars characters."""
    return (text[start:start + chunk_chars] for start in range(0, len(text), chunk_chars))
