"""Local WordPiece tokenizers (no network), BERT-compatible, cased by default like Bio_ClinicalBERT.

``build_wordpiece_tokenizer`` learns a WordPiece vocabulary (deterministically) and wraps it in a
``transformers.BertTokenizerFast``; ``tiny_tokenizer`` builds a small one from built-in ophthalmic sentences
for tests and the offline demo. For real training use the Hub tokenizer::

    AutoTokenizer.from_pretrained("emilyalsentzer/Bio_ClinicalBERT")  # cased vocabulary
"""

from __future__ import annotations

import heapq
import string
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0, [UNK] = 1, ... as in BERT

# Every printable ASCII character is in the vocabulary; letters and digits also as "##" continuation pieces,
# so ASCII text never maps to [UNK] (punctuation is always split into its own word by the pre-tokenizer).
_ALPHABET = string.ascii_letters + string.digits + string.punctuation
_CONTINUATION_CHARS = string.ascii_letters + string.digits

TINY_CORPUS: tuple[str, ...] = (
    "Normal fundus.",
    "Normal fundus photograph with a healthy optic disc and macula.",
    "The optic disc is pink with sharp margins.",
    "The cup to disc ratio is 0.3 in the right eye.",
    "Enlarged optic cup with a cup to disc ratio of 0.8.",
    "Glaucomatous optic neuropathy with inferior rim thinning.",
    "Suspected glaucoma: vertical cup elongation and notching of the neuroretinal rim.",
    "Peripapillary atrophy around the optic disc.",
    "Mild non-proliferative diabetic retinopathy with scattered microaneurysms.",
    "Moderate non-proliferative diabetic retinopathy with dot and blot haemorrhages.",
    "Severe non-proliferative diabetic retinopathy with venous beading.",
    "Proliferative diabetic retinopathy with neovascularisation of the disc.",
    "Neovascularisation elsewhere and preretinal haemorrhage.",
    "Hard exudates near the fovea suggest diabetic macular oedema.",
    "Clinically significant macular oedema with circinate exudates.",
    "Cotton wool spots along the superior vascular arcade.",
    "Flame-shaped haemorrhages in the nerve fibre layer.",
    "Multiple microaneurysms in the posterior pole.",
    "Laser photocoagulation scars in the mid periphery.",
    "Panretinal photocoagulation scars after treatment of proliferative retinopathy.",
    "Drusen at the macula consistent with early age-related macular degeneration.",
    "Large soft drusen and pigmentary changes: intermediate AMD.",
    "Geographic atrophy of the retinal pigment epithelium.",
    "Neovascular AMD with subretinal haemorrhage at the macula.",
    "Hypertensive retinopathy with arteriovenous nicking.",
    "Arteriolar narrowing and copper wiring of the retinal vessels.",
    "Retinal vessels are of normal calibre.",
    "Tortuous retinal veins.",
    "Central retinal vein occlusion with widespread haemorrhages.",
    "Branch retinal vein occlusion in the superotemporal quadrant.",
    "Central retinal artery occlusion with a cherry red spot.",
    "Pathologic myopia with a tilted disc and peripapillary atrophy.",
    "High myopia with a tessellated fundus.",
    "Myopic maculopathy with lacquer cracks.",
    "Blurred image due to cataract.",
    "Media opacity from a dense cataract reduces image quality.",
    "Hazy fundus view because of lens opacity.",
    "Poor quality image, ungradable.",
    "Good quality image centred on the macula.",
    "Disc-centred photograph of the left eye.",
    "Macula-centred photograph of the right eye.",
    "The macula appears normal with a bright foveal reflex.",
    "Epiretinal membrane with macular wrinkling.",
    "Full thickness macular hole.",
    "Retinal detachment in the inferior periphery.",
    "Papilloedema with swollen optic disc margins.",
    "Optic disc pallor suggests optic atrophy.",
    "Optic disc drusen.",
    "Choroidal naevus in the temporal periphery.",
    "Retinitis pigmentosa with bone spicule pigmentation.",
    "Chorioretinal scar from previous toxoplasmosis.",
    "No diabetic retinopathy.",
    "No signs of glaucoma.",
    "No abnormality detected in either eye.",
    "Fundus image of a diabetic patient, grade 0.",
    "DR grade 2 with microaneurysms, haemorrhages and hard exudates.",
    "Referable diabetic retinopathy.",
    "Vitreous haemorrhage obscures the fundus.",
    "Asteroid hyalosis.",
    "Myelinated nerve fibres near the optic disc.",
    "OCT shows drusen; fundus photograph shows yellow deposits.",
    "Fundus photography with a 45 degree field of view.",
)


def _learn_wordpiece_vocab(
    word_counts: dict[str, int], vocab_size: int, min_frequency: int, alphabet: Iterable[str]
) -> list[str]:
    """Deterministic WordPiece vocabulary learning (frequency-based merges, as the ``tokenizers`` trainer).

    Words are split into characters (``["c", "##h", "##a", ...]``); the most frequent adjacent pair is merged
    repeatedly (ties broken by the lexicographically smallest pair) until ``vocab_size`` tokens exist or no
    pair occurs ``min_frequency`` times. Returns the non-special tokens in creation order.
    """
    words = sorted(word_counts.items())  # sorted: iteration order never depends on hashing
    symbols = [[w[0]] + ["##" + c for c in w[1:]] for w, _ in words]
    counts = [c for _, c in words]

    tokens: list[str] = []
    seen: set[str] = set()
    for token in sorted(set(alphabet)) + sorted({s for word in symbols for s in word}):
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    pair_counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, word in enumerate(symbols):
        for pair in pairwise(word):
            pair_counts[pair] = pair_counts.get(pair, 0) + counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    budget = vocab_size - len(SPECIAL_TOKENS)
    while len(tokens) < budget and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale heap entry
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            word = symbols[i]
            for old in pairwise(word):
                pair_counts[old] -= counts[i]
                where.get(old, set()).discard(i)
                changed.add(old)
            new_word, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == first and word[j + 1] == second:
                    new_word.append(merged)
                    j += 2
                else:
                    new_word.append(word[j])
                    j += 1
            symbols[i] = new_word
            for new in pairwise(new_word):
                pair_counts[new] = pair_counts.get(new, 0) + counts[i]
                where.setdefault(new, set()).add(i)
                changed.add(new)
        pair_counts.pop(pair, None)
        for other in sorted(changed - {pair}):
            if pair_counts.get(other, 0) > 0:
                heapq.heappush(heap, (-pair_counts[other], other))
    return tokens


def build_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    lowercase: bool = False,
    min_frequency: int = 1,
) -> BertTokenizerFast:
    """Learn a BERT WordPiece vocabulary from ``texts`` locally and return it as a ``BertTokenizerFast``.

    The ``tokenizers`` library provides the BERT normalizer and pre-tokenizer used to split the training text
    (and, inside the returned tokenizer, the WordPiece model). The merge loop itself is done here in Python:
    the ``tokenizers`` ``WordPieceTrainer`` breaks frequency ties through hash-map order, so it returns a
    different vocabulary from call to call; this one is deterministic (same texts -> same ids, always).

    Args:
        texts: training sentences.
        vocab_size: target vocabulary size (special tokens included). The printable ASCII characters (and
            ``##`` continuation pieces for letters and digits) are always included, so for a very small
            ``vocab_size`` the final vocabulary can be larger.
        lowercase: lower-case (and strip accents) before tokenizing, as uncased BERT does. Defaults to
            ``False`` (cased, like Bio_ClinicalBERT).
        min_frequency: minimum frequency for a merged sub-word to enter the vocabulary.

    Returns:
        A ``BertTokenizerFast`` with ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, the BERT normalizer
        (``lowercase`` as given), the BERT pre-tokenizer and a ``[CLS] ... [SEP]`` post-processor. Its saved
        files record ``do_lower_case`` so that ``AutoTokenizer.from_pretrained(dir)`` reproduces the ids.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be an iterable of sentences, not a single string")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be larger than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    # strip_accents=None: accents are stripped only when lower-casing (BERT semantics, as BertTokenizer does).
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts must contain strings, got {type(text).__name__}")
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if not word_counts:
        raise ValueError("texts contains no non-empty sentence to train on")

    alphabet = _ALPHABET.lower() if lowercase else _ALPHABET
    continuation = _CONTINUATION_CHARS.lower() if lowercase else _CONTINUATION_CHARS
    base = list(alphabet) + ["##" + c for c in continuation]
    learned = _learn_wordpiece_vocab(dict(word_counts), vocab_size, min_frequency, base)
    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for token in learned:
        vocab.setdefault(token, len(vocab))

    # BertTokenizerFast builds the BERT normalizer / pre-tokenizer / WordPiece model / [CLS] $A [SEP]
    # post-processor from the vocab and stores do_lower_case in tokenizer_config.json, so saved files reload
    # identically with AutoTokenizer.
    return BertTokenizerFast(
        vocab=vocab,
        do_lower_case=lowercase,
        strip_accents=None,
        model_max_length=512,
    )


def tiny_tokenizer() -> BertTokenizerFast:
    """A small cased WordPiece tokenizer (~300 tokens) trained on built-in ophthalmic sentences (deterministic)."""
    return build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=300, lowercase=False, min_frequency=1)


__all__ = ["SPECIAL_TOKENS", "TINY_CORPUS", "build_wordpiece_tokenizer", "tiny_tokenizer"]
