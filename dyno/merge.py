"""Splitting multi-key and fan-out requests, and merging their replies.

Pure functions over argv lists and raw reply bytes. The planner decides *where*
parts go; this module decides what they are and how their replies become the one
reply Redis would have given.
"""

from __future__ import annotations

from typing import Sequence

from dyno import resp


def array_items(reply: bytes) -> list[bytes]:
    """The raw elements of an array reply (which must be complete and well-formed)."""
    newline = reply.index(b"\r\n")
    count = int(reply[1:newline])
    items = []
    pos = newline + 2
    for _ in range(max(count, 0)):
        end = resp.scan_reply(reply, pos)
        items.append(reply[pos:end])
        pos = end
    return items


def is_error(reply: bytes) -> bool:
    return reply[:1] == b"-"


def first_error(replies: Sequence[bytes]) -> bytes | None:
    for reply in replies:
        if reply[:1] == b"-":
            return reply
    return None


# -- split ----------------------------------------------------------------------------


def split_keys(argv: list[bytes], owners: Sequence[object], stride: int) -> list[tuple]:
    """Group a multi-key command's key (or key/value) arguments by owner:
    ``owners[i]`` owns the i-th key.

    Returns [(owner, sub_argv, positions)] in the order owners first appear, where
    positions are the indexes of the keys in the original key list, so replies can
    be put back in order. Owners are told apart by identity (the ring interns
    replica sets: hashing a tuple of nodes would cost more than the split)."""
    groups: dict[int, tuple] = {}
    name = argv[0]
    if stride == 1:
        for index, owner in enumerate(owners):
            entry = groups.get(id(owner))
            if entry is None:
                groups[id(owner)] = (owner, [name, argv[index + 1]], [index])
            else:
                entry[1].append(argv[index + 1])
                entry[2].append(index)
        return list(groups.values())
    for index, owner in enumerate(owners):
        start = 1 + index * stride
        entry = groups.get(id(owner))
        if entry is None:
            groups[id(owner)] = (owner, [name, *argv[start : start + stride]], [index])
        else:
            entry[1].extend(argv[start : start + stride])
            entry[2].append(index)
    return list(groups.values())


# -- merge ----------------------------------------------------------------------------


def merge_mget(parts: list[bytes], positions: list[list[int]], total: int) -> bytes:
    """Put each part's MGET values back where their keys were."""
    error = first_error(parts)
    if error is not None:
        return error
    values: list[bytes] = [resp.NULL_BULK] * total
    for reply, where in zip(parts, positions):
        for index, item in zip(where, array_items(reply)):
            values[index] = item
    return resp.array(values)


def merge_sum(parts: list[bytes]) -> bytes:
    """DEL, UNLINK, EXISTS, TOUCH, DBSIZE: the integer replies added up."""
    error = first_error(parts)
    if error is not None:
        return error
    return resp.integer(sum(int(reply[1:-2]) for reply in parts))


def merge_all_ok(parts: list[bytes]) -> bytes:
    """MSET, FLUSHALL...: every part must agree; the first error wins."""
    error = first_error(parts)
    if error is not None:
        return error
    return parts[0]


def merge_concat(parts: list[bytes]) -> bytes:
    """KEYS: the arrays joined."""
    error = first_error(parts)
    if error is not None:
        return error
    items: list[bytes] = []
    for reply in parts:
        items += array_items(reply)
    return resp.array(items)


def merge_first_non_null(parts: list[bytes]) -> bytes:
    """RANDOMKEY over the nodes of a rack."""
    for reply in parts:
        if reply != resp.NULL_BULK and reply != resp.NULL3 and not is_error(reply):
            return reply
    return first_error(parts) or resp.NULL_BULK


# -- SCAN over the nodes of one rack --------------------------------------------------
#
# A cluster cursor packs (node cursor, node index): cursor = node_cursor * N + index
# for the N nodes of one rack in ring order. Cursor 0 starts at node 0; when a node's
# own cursor comes back 0 the scan moves to the next node; after the last node the
# cluster cursor is 0. A stable cluster is visited exactly once per key, because
# each node's own SCAN guarantees that for its keys and a rack's nodes hold
# disjoint key sets.


def scan_target(cursor: bytes, nodes: int) -> tuple[int, int] | None:
    """(node index, node cursor) for a cluster cursor, or None if it is not a cursor."""
    if not cursor.isdigit():
        return None
    value = int(cursor)
    if value >= 2**64:
        return None
    return value % nodes, value // nodes


def scan_reply(reply: bytes, index: int, nodes: int) -> bytes:
    """Rewrite a node's SCAN reply with the cluster cursor."""
    if is_error(reply):
        return reply
    cursor_reply, keys = array_items(reply)
    node_cursor = int(cursor_reply[cursor_reply.index(b"\r\n") + 2 : -2])
    if node_cursor:
        cluster_cursor = node_cursor * nodes + index
    else:
        cluster_cursor = index + 1 if index + 1 < nodes else 0
    return resp.array([resp.bulk(b"%d" % cluster_cursor), keys])
