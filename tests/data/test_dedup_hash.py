"""The import's exact-dedup hash: the C++ whitespace collapse equals Python's str.split()."""
import hashlib
import random
import sys

from glotta.data.dedup import content_hash, content_hash_utf8
from glotta.data.native import collapse_ws


def _python(text: str) -> bytes:
    return " ".join(text.split()).encode("utf-8")


def test_whitespace_table_matches_python_for_every_code_point():
    # Every code point alone, between letters and doubled: the C++ table must agree with
    # str.isspace (what str.split uses) everywhere, or stored hashes would change.
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    spaces = {c for c in chars if c.isspace()}
    assert len(spaces) == 29  # Python 3.11's table; the C++ one lists the same characters
    wrong = [hex(ord(c)) for c in chars if collapse_ws(f"a{c}{c}b".encode()) != _python(f"a{c}{c}b")]
    assert wrong == []


def test_random_texts_hash_like_the_python_collapse():
    rng = random.Random(7)
    pool = list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u202f\u205f\u3000\ufeff") + list("ab.é中𝄞")
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randrange(0, 40)))
        data = text.encode("utf-8")
        assert collapse_ws(data) == _python(text), repr(text)
        old = int.from_bytes(hashlib.blake2b(_python(text), digest_size=8).digest(), "little")  # earlier imports
        assert content_hash_utf8(data) == content_hash(text) == old


def test_hash_changes_with_the_text_but_not_with_its_spacing():
    assert content_hash("a b\n\nc") == content_hash("  a\u3000b c\t")
    assert content_hash("a b c") != content_hash("a b d")
