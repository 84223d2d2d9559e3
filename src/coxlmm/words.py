"""Word lists, in one place: what the grounding, the scorers' training and the embedded models read.

English (the grounding's word filter, grounding/text.py; the scorer's distractor words, train/scorer.py):
    english_words()         the offline `english-words` list (web2), lower-cased
    minilm_vocabulary()     the WordPiece vocabulary of all-MiniLM-L6-v2 (its weight package, packages.py)
    grounding_vocabulary()  web2 minus short entries that are not whole-word MiniLM tokens (why:
                            grounding/text.py's module doc)
    stopwords()             scikit-learn's English stopwords

The shapes world's caption language (data/shapes.py draws captions in it; DePALM-mini's connector
records the version and styles it was trained on, models/depalm_mini.py):
    GENERATOR_VERSION, VERSION_NOTES, STYLES
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import lru_cache

from coxlmm.errors import CoxlmmError
from coxlmm.packages import minilm_dir

# --- the shapes world's caption language -----------------------------------------------------------
GENERATOR_VERSION = 2
VERSION_NOTES: dict[int, str] = {
    1: "one caption style (size colour shape position), every (shape, colour) pair in the train split",
    2: "two caption styles chosen by the prompt (attribute_first, shape_first) and 4 (shape, colour) pairs "
       "held out of the train split",
}
STYLES: tuple[str, ...] = ("attribute_first", "shape_first")


# --- English ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def english_words(source: str = "web2") -> frozenset[str]:
    """The offline English word list (lower-cased); loaded once per process."""
    from english_words import get_english_words_set

    return frozenset(get_english_words_set([source], lower=True))


@lru_cache(maxsize=1)
def minilm_vocabulary() -> frozenset[str]:
    """all-MiniLM-L6-v2's WordPiece vocabulary (bert-base-uncased's 30k pieces, `##` continuations
    included). CoxlmmError when its weight package is missing, OSError when its vocab.txt cannot be read."""
    with open(os.path.join(minilm_dir(), "vocab.txt"), encoding="utf-8") as f:
        return frozenset(line.strip() for line in f)


SHORT_WORD = 4  # web2 words up to this length must also be common (a whole WordPiece token)


@lru_cache(maxsize=1)
def grounding_vocabulary() -> frozenset[str]:
    """The default word list of `filter_words`: web2 minus short entries that are not whole-word
    tokens of all-MiniLM-L6-v2's vocabulary (rule and counts: grounding/text.py). Without that
    package, plain web2 (with a warning)."""
    web2 = english_words()
    try:
        common = minilm_vocabulary()
    except (CoxlmmError, OSError) as e:
        warnings.warn(f"grounding words: plain web2, short fragments not removed ({e})", stacklevel=2)
        return web2
    return frozenset(w for w in web2 if len(w) > SHORT_WORD or w in common)


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """scikit-learn's English stopword list (318 words). Read from its own module file, which holds only the
    list: importing it the usual way runs `sklearn/__init__` and imports scikit-learn whole (a second or more,
    in every job that grounds concepts)."""
    try:
        package = importlib.util.find_spec("sklearn")  # locates the package without importing it
        path = os.path.join(list(package.submodule_search_locations)[0], "feature_extraction", "_stop_words.py")
        spec = importlib.util.spec_from_file_location("_coxlmm_sklearn_stop_words", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return frozenset(module.ENGLISH_STOP_WORDS)
    except (AttributeError, ImportError, OSError, TypeError):  # another layout: the public import
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
