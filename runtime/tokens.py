"""Token files: flat arrays of token ids, memory-mapped with their id type; no torch import.

Two layouts are read:

- **raw**: the ids and nothing else (nanoGPT's ``.bin``), uint16, uint32 or int32; the type comes
  from ``--data-dtype`` or, when absent, from the vocabulary (:func:`token_dtype`);
- **llm.c**: a header of 256 little-endian int32 followed by the ids, as llm.c's
  ``dev/data/data_common.py`` ``write_datafile`` writes it: ``header[0]`` the magic,
  ``header[1]`` the version, ``header[2]`` the number of ids; magic 20240520 with version 1 means
  uint16 ids (its "gpt-2" descriptor), magic 20240801 with version 7 uint32 ids ("llama-3").
  Every other header entry is 0 there and is not read here.

A file is taken as llm.c's only when its first int32 is one of the two magics *and* the version
and the id count agree with the file's size; a magic with a wrong version or count is refused
(a damaged header) rather than read as raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np

TOKEN_DTYPES = ("uint16", "uint32", "int32")
LLMC_HEADER_INTS = 256  # llm.c: "header is always 256 int32 values"
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
# llm.c dev/data/data_common.py HEADERS_INFO: magic -> (version, id type)
LLMC_FORMATS = {20240520: (1, "uint16"), 20240801: (7, "uint32")}


@dataclass(frozen=True)
class TokenFile:
    """Where a file's ids are: ``count`` ids of ``dtype`` from byte ``offset`` on."""

    path: str
    dtype: str
    offset: int  # bytes before the first id: 0 (raw) or 1024 (llm.c header)
    count: int
    layout: str  # "raw" or "llmc"

    def ids(self) -> np.memmap:
        """The ids, memory-mapped read-only (nothing is read until indexed)."""
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=(self.count,))


def token_dtype(vocab_size: int) -> str:
    """The narrowest id type of a raw file for this vocabulary: uint16 up to 65,536 ids (GPT-2's
    50,257), int32 beyond (Llama 3's 128,256)."""
    return "uint16" if vocab_size <= 2**16 else "int32"


def _llmc_header(path: str, size: int) -> TokenFile | None:
    """The llm.c layout when the file starts with one of its magics; ValueError if the rest of
    the header disagrees with the file."""
    if size < LLMC_HEADER_BYTES:
        return None
    header = np.fromfile(path, dtype="<i4", count=3)
    magic, version, count = (int(v) for v in header)
    if magic not in LLMC_FORMATS:
        return None
    want_version, dtype = LLMC_FORMATS[magic]
    if version != want_version:
        raise ValueError(f"token file {path}: llm.c magic {magic} with version {version}; llm.c writes {want_version}")
    item = np.dtype(dtype).itemsize
    if size != LLMC_HEADER_BYTES + count * item:
        raise ValueError(
            f"token file {path}: llm.c header says {count} {dtype} ids, so {LLMC_HEADER_BYTES} + {count} * {item} = "
            f"{LLMC_HEADER_BYTES + count * item} bytes; the file has {size}"
        )
    return TokenFile(path, dtype, LLMC_HEADER_BYTES, count, "llmc")


def open_token_file(path: str, vocab_size: int, data_dtype: str | None = None) -> TokenFile:
    """The layout and id type of ``path`` (no id read yet); ValueError with one line when the
    flag, the header or the size disagree."""
    if data_dtype is not None and data_dtype not in TOKEN_DTYPES:
        raise ValueError(f"--data-dtype must be one of {', '.join(TOKEN_DTYPES)} (got {data_dtype!r})")
    try:
        stat = Path(path).stat()
    except OSError as exc:  # missing, a link loop, a path through a file: name the file, not errno
        raise ValueError(f"token file {path}: {exc.strerror or exc}") from None
    if not S_ISREG(stat.st_mode):  # a directory's size is not a count of ids; a FIFO would block
        raise ValueError(f"token file {path}: not a regular file (a directory or a device)")
    size = stat.st_size
    found = _llmc_header(path, size)
    if found is not None:
        if data_dtype is not None and data_dtype != found.dtype:
            raise ValueError(f"token file {path}: its llm.c header says {found.dtype} ids, --data-dtype {data_dtype}")
        return found
    dtype = data_dtype or token_dtype(vocab_size)
    item = np.dtype(dtype).itemsize
    if size % item:
        raise ValueError(f"token file {path}: {size} bytes is not a whole number of {dtype} ids ({item} bytes)")
    return TokenFile(path, dtype, 0, size // item, "raw")


def check_token_file(path: str, plan: dict, data_dtype: str | None = None) -> TokenFile:
    """The file's layout after checking it can be trained on: it holds one sequence, and every id
    is below the vocabulary (an id beyond it would fail inside every rank's embedding). Reads
    every id once. ValueError with one line otherwise."""
    vocab, seq = plan["inputs"]["model"]["vocab_size"], plan["inputs"]["training"]["seq_len"]
    tf = open_token_file(path, vocab, data_dtype)
    if tf.count < seq + 1:
        raise ValueError(f"token file {path} holds {tf.count} {tf.dtype} ids; one sequence needs {seq + 1}")
    tokens = tf.ids()
    top, low = int(tokens.max()), int(tokens.min())
    if top >= vocab or low < 0:
        bad = top if top >= vocab else low
        hint = (
            "a file of another tokenizer"
            if tf.layout == "llmc"
            else "a file of another tokenizer, or written in another width (--data-dtype "
            + "/".join(d for d in TOKEN_DTYPES if d != tf.dtype)
            + ")"
        )
        raise ValueError(
            f"token file {path} read as {tf.dtype} holds id {bad}, outside the model's vocabulary of {vocab}: {hint}"
        )
    return tf
