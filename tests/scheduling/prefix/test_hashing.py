from __future__ import annotations

from epp.scheduling.prefix.hashing import prompt_block_hashes
from tests.conftest import make_request


def test_text_blocks_are_four_bytes_per_token_and_partial_tail_dropped() -> None:
    assert len(prompt_block_hashes(make_request(prompt=b"x" * 64 * 3 + b"tail"), 16, 256)) == 3
    assert len(prompt_block_hashes(make_request(prompt=b"x" * 64 * 300), 16, 256)) == 256
    assert prompt_block_hashes(make_request(prompt=b"short"), 16, 256) == []


def test_equal_prefixes_share_leading_hashes_only_within_a_model() -> None:
    a = prompt_block_hashes(make_request(prompt=b"s" * 128 + b"a" * 64), 16, 256)
    b = prompt_block_hashes(make_request(prompt=b"s" * 128 + b"b" * 64), 16, 256)
    assert a[:2] == b[:2] and a[2] != b[2]
    other_model = prompt_block_hashes(make_request(model="other", prompt=b"s" * 128), 16, 256)
    assert not set(other_model) & set(a)
    salted = prompt_block_hashes(make_request(prompt=b"s" * 128, body={"cache_salt": "t1"}), 16, 256)
    assert not set(salted) & set(a)


def test_token_ids_hash_token_blocks() -> None:
    tokens = list(range(40))
    hashes = prompt_block_hashes(make_request(prompt=b"ignored" * 100, prompt_token_ids=tokens), 16, 256)
    assert len(hashes) == 2
    same_prefix = prompt_block_hashes(make_request(prompt_token_ids=tokens[:16] + [999] * 16), 16, 256)
    assert same_prefix[0] == hashes[0] and same_prefix[1] != hashes[1]
