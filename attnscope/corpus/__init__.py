"""Head scores over a corpus: every score of `attnscope.heads` pooled over many texts.

    reading.py   `read_corpus`: (line number, text) from a plain file (one text a line),
                 JSON Lines (`.jsonl`/`.ndjson`, one string field of each object) or
                 stdin (`-`); blank lines skipped; a named corpus must be a regular
                 file, lines are read in bounded chunks and JSON depth-checked
    per_text.py  the per-text file: a header, then one JSON line per text, appended as
                 each text finishes; read back to resume, validated against the run and
                 the corpus; under torchrun one file per rank, merged at the end;
                 locked for the whole run
    records.py   what one per-text line holds (header, record) and the checks every
                 resumed record passes, like any input
    pooling.py   `corpus_scores`: one forward pass a text, float64 sums and row counts
                 pooled over the texts (and the processes), and on a model with
                 experts each MoE layer's expert counts; `CorpusScores`,
                 `CorpusProgress`, `corpus_dict`
    packing.py   one pass over texts packed together, each masked to itself, and
                 the hook cutting its pattern into each text's rows

Texts run one a pass, or packed (--batch-tokens: consecutive texts in one pass, each
masked to itself with its own positions); throughput also comes from more processes.
Nothing here prints: progress goes to a callback.
"""

from attnscope.corpus.per_text import PER_TEXT_FORMAT, PER_TEXT_VERSION, rank_file
from attnscope.corpus.pooling import CorpusProgress, CorpusScores, corpus_dict, corpus_scores
from attnscope.corpus.reading import JSONL_SUFFIXES, read_corpus

__all__ = ["JSONL_SUFFIXES", "PER_TEXT_FORMAT", "PER_TEXT_VERSION", "CorpusProgress", "CorpusScores",
           "corpus_dict", "corpus_scores", "rank_file", "read_corpus"]
