r"""The CLIP byte-level BPE tokenizer, offline, from a user's ``vocab.json`` and ``merges.txt``.

Reproduces Hugging Face ``CLIPTokenizer`` (transformers 5, backed by ``tokenizers``) with
the standard library alone:

1. Special tokens (``<|startoftext|>``, ``<|endoftext|>``) written literally in the text
   are matched first, case-sensitively, and map to their ids.
2. Normalization of the rest: Unicode NFC, every run of whitespace to one space, then
   lowercase character by character (``"ΣΑΣ" -> "σασ"``, no final-sigma rule, as
   ``tokenizers``' ``Lowercase``). No ftfy.
3. Pre-tokenization with CLIP's pattern
   ``'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`` (whitespace dropped).
   Python's ``re`` has no ``\p{..}`` classes, so the pattern is run by a small scanner:
   a letter is a character with ``str.isalpha()`` (exactly the categories ``L*``), a
   number one whose Unicode category is ``N*`` (one character per piece), whitespace the
   Unicode ``White_Space`` set (so ``"\x1c"`` is punctuation, as in ``tokenizers``).
4. Each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode
   table), ``</w>`` is appended to the last character, and BPE merges are applied by rank.
5. ``<|startoftext|>`` + ids + ``<|endoftext|>``, truncated to ``max_length`` (the special
   tokens kept) and right-padded with the pad token (``<|endoftext|>`` by default).

Checked token for token against transformers' ``CLIPTokenizer`` in ``tests/test_clip.py``
(punctuation, digits, uppercase, contractions, NFC, non-Latin scripts, emoji, truncation).

References:
  Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
  ICML 2021 (https://arxiv.org/abs/2103.00020), and OpenAI's ``clip/simple_tokenizer.py``.
  Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units", ACL 2016
  (BPE).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "CLIPTokenizer",
    "bytes_to_unicode",
    "normalize_text",
    "pre_tokenize",
    "train_bpe",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_END_OF_WORD = "</w>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # in the pattern's order
# Unicode's White_Space property (what \s means to the tokenizers' regex engine).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves;
    the other 68 bytes map to ``chr(256 + k)`` in increasing byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def normalize_text(text: str) -> str:
    """NFC, whitespace runs to one space, per-character lowercase (tokenizers' semantics)."""
    text = unicodedata.normalize("NFC", text)
    out = []
    in_space = False
    for ch in text:
        if ch in _WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch.lower())
            in_space = False
    return "".join(out)


def _char_class(ch: str) -> str:
    if ch in _WHITESPACE:
        return "space"
    if ch.isalpha():
        return "letter"
    if unicodedata.category(ch).startswith("N"):
        return "number"
    return "other"


def pre_tokenize(text: str) -> list[str]:
    """Splits normalized text into CLIP's pre-tokens (the pattern in the module docstring).

    At each position the alternatives are tried in the pattern's order: a contraction,
    a run of letters, one number character, a run of anything else that is not
    whitespace; whitespace between pieces is dropped.

    Args:
      text: Output of :func:`normalize_text`.

    Returns:
      The pieces, in order.
    """
    pieces = []
    i, n = 0, len(text)
    while i < n:
        kind = _char_class(text[i])
        if kind == "space":
            i += 1
            continue
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if contraction is not None:
            j = i + len(contraction)
        elif kind == "number":
            j = i + 1
        else:  # a maximal run of letters, or of "other" characters
            j = i + 1
            while j < n and _char_class(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class CLIPTokenizer:
    """CLIP's BPE tokenizer from ``vocab.json`` + ``merges.txt`` (see the module docstring).

    Example::

        tok = CLIPTokenizer.from_directory("/models/clip-vit-base-patch32")
        ids = tok(["a photo of a cat", "a dog"])  # (2, 77) int32, padded with EOS

    Attributes:
      encoder: Token string to id.
      bpe_ranks: Merge pair to rank (lower merges first).
      max_length: Default sequence length (CLIP: 77).
      bos_token_id / eos_token_id / pad_token_id / unk_token_id: Special ids.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        max_length: int = 77,
        pad_token: str = EOS_TOKEN,
        unk_token: str = EOS_TOKEN,
    ):
        """Builds the tokenizer from an in-memory vocabulary and merge list.

        Args:
          vocab: Token string to id; must contain ``<|startoftext|>``, ``<|endoftext|>``,
            ``pad_token`` and ``unk_token``.
          merges: Merge pairs in rank order.
          max_length: Default padded length (including BOS and EOS), at least 2.
          pad_token: Token used for right padding.
          unk_token: Token for a byte sequence the vocabulary lacks.

        Raises:
          ValueError: If a required token is missing or ``max_length`` < 2.
        """
        self.encoder = dict(vocab)
        missing = [t for t in (BOS_TOKEN, EOS_TOKEN, pad_token, unk_token) if t not in vocab]
        if missing:
            raise ValueError(f"vocab lacks the special tokens {sorted(set(missing))}.")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS + EOS), got {max_length=}.")
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.merges = [tuple(pair) for pair in merges]
        self.pad_token, self.unk_token = pad_token, unk_token
        self.max_length = int(max_length)
        self.bos_token_id = self.encoder[BOS_TOKEN]
        self.eos_token_id = self.encoder[EOS_TOKEN]
        self.pad_token_id = self.encoder[pad_token]
        self.unk_token_id = self.encoder[unk_token]
        self._byte_map = bytes_to_unicode()
        self._special = {BOS_TOKEN: self.bos_token_id, EOS_TOKEN: self.eos_token_id}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(
        cls,
        vocab_file: str | os.PathLike[str],
        merges_file: str | os.PathLike[str],
        **kwargs,
    ) -> CLIPTokenizer:
        """Reads Hugging Face's ``vocab.json`` (token -> id) and ``merges.txt``.

        ``merges.txt`` holds one ``"left right"`` pair per line; a first line starting
        with ``#version`` and blank lines are skipped. ``kwargs`` go to the constructor.

        Raises:
          FileNotFoundError: If a file is absent.
          ValueError: If a merges line is not two space-separated tokens.
        """
        for f in (vocab_file, merges_file):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"CLIP tokenizer file {os.fspath(f)!r} does not exist.")
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
        merges = []
        with open(merges_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line or (lineno == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(
                        f"{os.fspath(merges_file)!r} line {lineno}: expected two "
                        f"space-separated tokens, got {line!r}."
                    )
                merges.append((parts[0], parts[1]))
        return cls(vocab, merges, **kwargs)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str], **kwargs) -> CLIPTokenizer:
        """Reads ``vocab.json`` and ``merges.txt`` from a Hugging Face model directory.

        When the directory has a ``tokenizer_config.json`` naming a ``pad_token`` or
        ``model_max_length`` (e.g. ``"!"`` for some Stable Diffusion text encoders), those
        are used unless given in ``kwargs``.
        """
        directory = os.fspath(directory)
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                cfg = json.load(f)
            pad = cfg.get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if isinstance(pad, str):
                kwargs.setdefault("pad_token", pad)
            max_len = cfg.get("model_max_length")
            if isinstance(max_len, int) and max_len < 1_000_000:
                kwargs.setdefault("max_length", max_len)
        return cls.from_files(
            os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"), **kwargs
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the tokenizer as a Hugging Face ``CLIPTokenizer`` folder.

        ``vocab.json``, ``merges.txt`` (with the ``#version: 0.2`` header),
        ``tokenizer_config.json`` and ``special_tokens_map.json``: what
        :meth:`from_directory` and transformers' ``CLIPTokenizer.from_pretrained`` read.
        """
        from diffjax.files import write_text_atomic

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
                    "pad_token": self.pad_token, "unk_token": self.unk_token}
        files = {
            "vocab.json": json.dumps(self.encoder, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
            "tokenizer_config.json": json.dumps(
                {**specials, "model_max_length": self.max_length,
                 "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}, indent=2),
            "special_tokens_map.json": json.dumps(specials, indent=2),
        }
        for name, text in files.items():
            write_text_atomic(os.path.join(directory, name), text)

    def bpe(self, piece: str) -> list[str]:
        """Applies the BPE merges to one pre-token (already byte-mapped); returns tokens."""
        word = [*piece[:-1], piece[-1] + _END_OF_WORD]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            word = list(_merge_pair(tuple(word), best))
        return word

    def _encode_piece(self, piece: str) -> list[int]:
        if piece not in self._cache:
            mapped = "".join(self._byte_map[b] for b in piece.encode("utf-8"))
            self._cache[piece] = [self.encoder.get(t, self.unk_token_id) for t in self.bpe(mapped)]
        return self._cache[piece]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS, padding or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}.")
        ids: list[int] = []
        for segment, special in _split_special(text, tuple(self._special)):
            if special:
                ids.append(self._special[segment])
                continue
            for piece in pre_tokenize(normalize_text(segment)):
                ids.extend(self._encode_piece(piece))
        return ids

    def __call__(
        self, texts: str | Sequence[str], max_length: int | None = None, *,
        truncate: bool = True,
    ) -> np.ndarray:
        """Tokenizes, adds BOS/EOS, truncates and right-pads to a fixed length.

        Args:
          texts: One string or a sequence of strings.
          max_length: Output length (default ``self.max_length``); longer texts are
            truncated to ``max_length - 2`` tokens before BOS/EOS are added.
          truncate: False refuses a text longer than the window instead (training
            captions, where a cut caption would teach the wrong text).

        Returns:
          ``(N, max_length)`` int32 ids (``N = 1`` for a single string).

        Raises:
          ValueError: with ``truncate=False``, naming the first text that does not fit,
            its token count and the window.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self.max_length if max_length is None else int(max_length)
        if length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS + EOS), got {max_length=}.")
        out = np.full((len(texts), length), self.pad_token_id, np.int32)
        for row, text in enumerate(texts):
            tokens = self.encode(text)
            if not truncate and len(tokens) > length - 2:
                raise ValueError(
                    f"text {row} ({text[:60]!r}) has {len(tokens)} tokens; the text window "
                    f"holds {length - 2} (max_length={length} with BOS and EOS)."
                )
            ids = [self.bos_token_id, *tokens[: length - 2], self.eos_token_id]
            out[row, : len(ids)] = ids
        return out


def _split_special(text: str, specials: tuple[str, ...]) -> list[tuple[str, bool]]:
    """Splits ``text`` around literal special tokens: ``[(segment, is_special), ...]``."""
    out = []
    start = i = 0
    while i < len(text):
        match = next((s for s in specials if text.startswith(s, i)), None)
        if match is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((match, True))
        i += len(match)
        start = i
    if start < len(text):
        out.append((text[start:], False))
    return out


def train_bpe(
    texts: Sequence[str],
    *,
    max_merges: int = 10_000,
    min_frequency: int = 2,
    max_length: int = 77,
) -> CLIPTokenizer:
    """Learns a CLIP-style byte-level BPE vocabulary from ``texts`` (Sennrich et al. 2016).

    The texts are normalized and pre-tokenized as :class:`CLIPTokenizer` does; starting
    from bytes (a word's last byte marked ``</w>``), the most frequent adjacent pair is
    merged, repeatedly (ties to the lexicographically smaller pair), until ``max_merges``
    merges or no pair occurs ``min_frequency`` times. The vocabulary is laid out as
    OpenAI's: the 256 byte tokens, their 256 ``</w>`` forms, one token per merge in order,
    then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id, so transformers'
    end-of-text pooling finds it either way), so any text stays encodable.

    Args:
      texts: The training captions.
      max_merges: At most this many merges.
      min_frequency: A pair must occur this often (weighted by word counts) to merge.
      max_length: The tokenizer's padded length (the text window, BOS and EOS included).

    Returns:
      The tokenizer; :meth:`CLIPTokenizer.save` writes it as a Hugging Face folder.
    """
    if isinstance(texts, str) or not len(texts):
        raise ValueError("texts must be a non-empty sequence of strings.")
    byte_map = bytes_to_unicode()
    counts: dict[tuple[str, ...], int] = {}
    for text in texts:
        for piece in pre_tokenize(normalize_text(text)):
            mapped = "".join(byte_map[b] for b in piece.encode("utf-8"))
            word = (*mapped[:-1], mapped[-1] + _END_OF_WORD)
            counts[word] = counts.get(word, 0) + 1
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in counts.items():
            for pair in itertools.pairwise(word):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        counts = {_merge_pair(word, best): count for word, count in counts.items()}
    symbols = list(byte_map.values())
    tokens = [*symbols, *(s + _END_OF_WORD for s in symbols), *(a + b for a, b in merges)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return CLIPTokenizer(vocab, merges, max_length=max_length)


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
