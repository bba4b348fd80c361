"""The numba kernel: parse Bybit JSON lines and replay the book, with no Python work per line.

State lives in typed arrays so a day can be fed chunk by chunk. Each side of the book is one
ascending array whose best level is at the END (asks are stored as negated prices), so the busy
top of the book moves few elements and both sides share one insert/delete routine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Helpers called per byte, per level or per message take arrays but never allocate. Compiled
# without numba's reference counting they skip an atomic incref/decref pair on every call,
# which was over half the kernel's time (measured: parse 2.1 -> 1.3 ns a byte, replay 50 -> 24
# ns a level). Only the batch entry points, which allocate, keep it.
helper = njit(cache=True, nogil=True, _nrt=False)  # type: ignore[call-overload]  # _nrt: numba's own switch, not in its stubs

# memchr (see _memchr) by its address in the C library, so compiled and cached code links
# to it on every platform, whatever symbols the process exports.
_LIBC = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(ctypes.util.find_library("c"))
llvm.add_symbol("memchr", ctypes.cast(_LIBC.memchr, ctypes.c_void_p).value)

# --- indexes into the int64 state vector -------------------------------------------------
S_HAVE_SNAPSHOT = 0
S_HAVE_U = 1
S_LAST_U = 2
S_LAST_TS = 3
S_NEXT_SECOND = 4
S_LO = 5  # + side (0 bids, 1 asks): first used index of the side's array
S_LINE_NO = 7
S_ERROR_CODE = 8
S_ERROR_LINE = 9
S_ERROR_COLUMN = 10
S_SOURCE_DEPTH = 11
S_SYMBOL_LEN = 12
S_HI = 14  # + side: one past the best level
S_MAX_LINE = 16  # parser: longest line accepted, in bytes (before its LF)
S_FOREIGN_LEN = 17  # parser: length of the other symbol a message named (symbol[1])
S_FIRST_TS = 18  # replayer: ts of the first message (any day), S_HAVE_TS once there is one
S_LAST_MSG_TS = 19  # replayer: ts of the latest message (any day)
S_HAVE_TS = 20
# replayer, the snapshot comparison (see _compare_snapshot)
S_REMOVED_AT_SNAPSHOT = 21  # crossed_levels_removed when the previous snapshot came
S_STALE = 22  # 1 once a delta at or after the day's end was skipped: the book is behind the file
S_DIFF_SIDE = 23  # the first disagreement (once snapshots_disagreeing > 0): side, 0 bids 1 asks
S_DIFF_LEVEL = 24  # ... its level (0 = best)
S_DIFF_TS = 25  # ... the snapshot's ts
S_DIFF_REPAIR = 26  # ... 1 when a crossed-book repair happened since the previous snapshot
STATE_SIZE = 32
# the first disagreement's values, in a float64 vector of DIFF_SIZE: ours (NaN when our side
# has fewer levels) and the snapshot's
D_OURS_PX, D_OURS_SZ, D_THEIRS_PX, D_THEIRS_SZ = 0, 1, 2, 3
DIFF_SIZE = 4

# --- indexes into the int64 params vector --------------------------------------------------
P_DAY_START = 0
P_DAY_END = 1
P_MAX_SILENCE_MS = 2
P_OUT_LEVELS = 3
P_CAPTURE_SECONDS = 4
P_MAX_LEVELS = 6
PARAMS_SIZE = 8

# --- counters: names in order, shared with the Python side --------------------------------
COUNT_NAMES = (
    "n_lines",
    "n_messages",
    "n_snapshots",
    "n_deltas",
    "deltas_before_snapshot",
    "seq_gaps",
    "crossed_messages",
    "crossed_levels_removed",
    "messages_before_day",
    "messages_after_day",
    "bad_lines",
    "book_overflow_levels",
    "snapshots_compared",
    "snapshots_agreeing",
    "snapshots_disagreeing",
    "snapshots_after_repair",
)
C_LINES, C_MESSAGES, C_SNAPSHOTS, C_DELTAS, C_BEFORE_SNAPSHOT, C_SEQ_GAPS = 0, 1, 2, 3, 4, 5
C_CROSSED, C_CROSSED_REMOVED, C_BEFORE_DAY, C_AFTER_DAY, C_BAD_LINES, C_OVERFLOW = (
    6, 7, 8, 9, 10, 11,
)
C_SNAP_COMPARED, C_SNAP_AGREEING, C_SNAP_DISAGREEING, C_SNAP_AFTER_REPAIR = 12, 13, 14, 15

# --- parse status codes ---------------------------------------------------------------------
OK = 0
ERROR_MESSAGES = {
    1: "not a JSON object",
    2: "unterminated or invalid string (a control byte or a bad escape in it)",
    3: "malformed number",
    4: "no \"type\" key",
    5: "no \"ts\" key",
    6: "no \"data\" object",
    7: "\"type\" is neither snapshot nor delta",
    8: "more price levels in one message than supported",
    9: "malformed [price, size] entry",
    10: "unexpected character",
    11: "number with more significant digits than a float holds exactly (unsupported)",
    12: "no \"u\" in data",
    13: "negative price or size",
    14: "\"ts\" or \"u\" is not a bare JSON integer within int64 (quoted, leading zeros, or too large)",
    15: "a message of another symbol",  # replay.py writes the symbols into the message
    16: "longer than the line limit",  # replay.py writes the limit into the message
}
E_NOT_OBJECT, E_STRING, E_NUMBER, E_NO_TYPE, E_NO_TS, E_NO_DATA, E_TYPE = 1, 2, 3, 4, 5, 6, 7
E_TOO_MANY_LEVELS, E_LEVEL, E_CHAR, E_DIGITS, E_NO_U, E_NEGATIVE = 8, 9, 10, 11, 12, 13
E_INT, E_SYMBOL, E_LONG = 14, 15, 16
INT64_MAX_TENTH = (2**63 - 1) // 10  # an int64 accumulator may take one more digit up to here

QUOTE, COMMA, COLON, LBRACE, RBRACE, LBRACKET, RBRACKET = 34, 44, 58, 123, 125, 91, 93
BACKSLASH, MINUS, DOT, NEWLINE, CR = 92, 45, 46, 10, 13
PLUS, LOWER_E, UPPER_E = 43, 101, 69
# JSON's four blanks (space, tab, LF, CR) as bits of one word: a blank test is two compares
JSON_BLANKS = (1 << 32) | (1 << 9) | (1 << 10) | (1 << 13)

KEY_TOPIC = np.frombuffer(b"topic", dtype=np.uint8)
KEY_TYPE = np.frombuffer(b"type", dtype=np.uint8)
KEY_TS = np.frombuffer(b"ts", dtype=np.uint8)
KEY_DATA = np.frombuffer(b"data", dtype=np.uint8)
KEY_S = np.frombuffer(b"s", dtype=np.uint8)
KEY_B = np.frombuffer(b"b", dtype=np.uint8)
KEY_A = np.frombuffer(b"a", dtype=np.uint8)
KEY_U = np.frombuffer(b"u", dtype=np.uint8)
WORD_SNAPSHOT = np.frombuffer(b"snapshot", dtype=np.uint8)
WORD_DELTA = np.frombuffer(b"delta", dtype=np.uint8)
WORD_TRUE = np.frombuffer(b"true", dtype=np.uint8)
WORD_FALSE = np.frombuffer(b"false", dtype=np.uint8)
WORD_NULL = np.frombuffer(b"null", dtype=np.uint8)
SIMPLE_ESCAPE = np.zeros(256, dtype=np.uint8)  # the bytes after a backslash JSON allows, but u
SIMPLE_ESCAPE[np.frombuffer(b'"\\/bfnrt', dtype=np.uint8)] = 1
MAX_NESTING = 62  # containers inside a skipped value; the open ones are bits of one int64
TOPIC_PREFIX = np.frombuffer(b"orderbook.", dtype=np.uint8)

# Exact powers of ten: m / 10**k is correctly rounded when m < 2**53 and k <= 22 (both exact).
POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)
EXACT_MANTISSA = 2**53
MAX_DIGITS = 18  # keeps the int64 mantissa from overflowing


@intrinsic
def _memchr(typingctx, arr, start, stop, byte):
    """Index of the first `byte` in arr[start:stop], or `stop`: libc's memchr.

    Finding each line's end is a pass over every byte of the day; libc's vectorised memchr
    does it far faster than a numba byte loop (parse 3.46 -> 2.68 ns/byte, benchmarks/RESULTS.md).
    """
    sig = types.intp(arr, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        start, stop, byte = args[1], args[2], args[3]
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i8p, [i8p, ir.IntType(32), ir.IntType(64)])
        memchr = cgutils.get_or_insert_function(builder.module, fnty, "memchr")
        base = builder.bitcast(builder.gep(array.data, [start]), i8p)
        found = builder.call(memchr, [base, builder.trunc(byte, ir.IntType(32)),
                                      builder.sub(stop, start)])
        offset = builder.sub(builder.ptrtoint(found, ir.IntType(64)),
                             builder.ptrtoint(base, ir.IntType(64)))
        is_null = cgutils.is_null(builder, found)
        return builder.select(is_null, stop, builder.add(start, offset))

    return sig, codegen


@njit(cache=True, nogil=True)
def find_byte(buf, start, byte):
    """Index of the first `byte` in buf[start:], or len(buf)."""
    return _memchr(buf, start, buf.shape[0], byte)


@helper
def _is_space(c):
    # JSON's blanks are space, tab, CR and LF and nothing else: a NUL or another control byte
    # between tokens makes the line invalid, as json.loads (the reference) says. Nearly every
    # call meets a byte above 32, so the first compare decides; a bit mask does the rest
    # without four compares (this runs ~40 times a line).
    return c <= 32 and ((JSON_BLANKS >> c) & 1) == 1


@helper
def _skip_space(buf, p, end):
    while p < end and _is_space(buf[p]):
        p += 1
    return p


@helper
def _equals(buf, start, stop, word):
    if stop - start != word.shape[0]:
        return False
    for i in range(word.shape[0]):  # noqa: SIM110 - numba without its runtime: a plain loop, no generator
        if buf[start + i] != word[i]:
            return False
    return True


@helper
def _is_hex(c):
    return 48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102


@helper
def _string_end(buf, p, end):
    """`p` is just past an opening quote; returns the index of the closing quote or -1.

    As strict as json.loads: a raw control byte (below 32) or an escape other than
    \\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX makes the string invalid (-1).
    """
    while p < end:
        c = buf[p]
        if c == QUOTE:
            return p
        if c < 32:
            return -1
        if c == BACKSLASH:
            if p + 1 >= end:
                return -1
            e = buf[p + 1]
            if e == 117:  # backslash-u and four hex digits
                if p + 5 >= end:
                    return -1
                for i in range(p + 2, p + 6):
                    if not _is_hex(buf[i]):
                        return -1
                p += 6
                continue
            if SIMPLE_ESCAPE[e] == 0:
                return -1
            p += 2
            continue
        p += 1
    return -1


@helper
def _compact_number(buf, q, end):
    """Digits, an optional dot and digits, then a quote, from q: (value, index of the quote).

    The shape of every number in Bybit files ("84325.10"): at most 15 digits, so the mantissa
    is below 2**53 and one division by an exact power of ten rounds as float() does. Any other
    shape returns index -1 and the caller takes the general routine.
    """
    start = q
    mantissa = 0
    while q < end:
        digit = buf[q] - 48
        if digit < 0 or digit > 9:
            break
        mantissa = mantissa * 10 + digit
        q += 1
    n_int = q - start
    frac_digits = 0
    if q < end and buf[q] == DOT:
        q += 1
        frac_start = q
        while q < end:
            digit = buf[q] - 48
            if digit < 0 or digit > 9:
                break
            mantissa = mantissa * 10 + digit
            q += 1
        frac_digits = q - frac_start
    if n_int == 0 or n_int + frac_digits > 15 or q >= end or buf[q] != QUOTE:
        return 0.0, -1
    if frac_digits == 0:
        return float(mantissa), q
    return mantissa / POW10[frac_digits], q


@helper
def _parse_decimal(buf, p, end):
    """A decimal number as Python's float() reads it, bit for bit: (value, next, status).

    The common shape (quoted, unsigned, at most 15 digits, like "84325.10") takes the tight
    loop of `_compact_number`; anything else goes to the general routine.
    """
    if p < end and buf[p] == QUOTE:
        value, q = _compact_number(buf, p + 1, end)
        if q >= 0:
            return value, q + 1, OK
    return _parse_decimal_general(buf, p, end)


@helper
def _parse_decimal_general(buf, p, end):
    """A decimal number as Python's float() reads it, bit for bit: (value, next, status).

    Accepts it bare or quoted, any count of leading or trailing zeros. The value is
    m · 10^e with m the significant digits; when m < 2^53 and |e| <= 22 both factors are
    exact and one IEEE multiply or divide rounds correctly (the fast path of Clinger's
    algorithm). Beyond that (17+ significant digits, never seen in Bybit files) it returns
    E_DIGITS rather than a value that might be one bit off.
    """
    quoted = p < end and buf[p] == QUOTE
    shape_end = -1
    if quoted:
        p += 1
    else:
        shape_end = _skip_number(buf, p, end)  # a bare number must be a JSON number (no ".5", "01")
        if shape_end < 0:
            return 0.0, p, E_NUMBER
    negative = False
    if p < end and buf[p] == MINUS:
        negative = True
        p += 1
    mantissa = 0
    exponent = 0
    pending_zeros = 0  # zeros after the last nonzero digit: a factor of ten, not yet a digit
    digits = 0
    seen_digit = False
    seen_dot = False
    while p < end:
        c = buf[p]
        if 48 <= c <= 57:
            seen_digit = True
            if seen_dot:
                exponent -= 1
            if c == 48:
                pending_zeros += 1
            else:
                if mantissa != 0:
                    digits += pending_zeros
                digits += 1
                if digits > MAX_DIGITS:
                    return 0.0, p, E_DIGITS
                for _ in range(pending_zeros if mantissa != 0 else 0):
                    mantissa *= 10
                mantissa = mantissa * 10 + (c - 48)
                pending_zeros = 0
        elif c == DOT and not seen_dot:
            seen_dot = True
        else:
            break
        p += 1
    if not seen_digit:
        return 0.0, p, E_NUMBER
    if quoted:
        if p >= end or buf[p] != QUOTE:
            return 0.0, p, E_NUMBER
        p += 1
    elif p != shape_end:  # exponent notation (not in Bybit files), or digits after a leading 0
        return 0.0, p, E_NUMBER
    exponent += pending_zeros  # trailing zeros scale the mantissa
    if mantissa == 0:
        value = 0.0
    elif exponent == 0:
        value = float(mantissa)  # int64 -> float64 rounds to nearest, as float() does
    elif mantissa > EXACT_MANTISSA or exponent > 22 or exponent < -22:
        return 0.0, p, E_DIGITS
    elif exponent >= 0:
        value = mantissa * POW10[exponent]
    else:
        value = mantissa / POW10[-exponent]
    return (-value if negative else value), p, OK


@helper
def _parse_int(buf, p, end):
    """A bare JSON integer within int64 (±(2**63 - 1)): (value, next, ok).

    The reference takes `ts` and `u` only as JSON integers, so a quoted one ("1710374400000"),
    a leading zero or a value past int64 (which would wrap) is no integer here either.
    """
    negative = p < end and buf[p] == MINUS
    if negative:
        p += 1
    value = 0
    start = p
    while p < end and 48 <= buf[p] <= 57:
        digit = buf[p] - 48
        if value > INT64_MAX_TENTH or (value == INT64_MAX_TENTH and digit > 7):
            return 0, p, False
        value = value * 10 + digit
        p += 1
    if p == start or (buf[start] == 48 and p - start > 1):
        return 0, p, False
    return (-value if negative else value), p, True


@helper
def _skip_number(buf, p, end):
    """Skips a number of JSON's grammar, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?: the
    index after it, or -1."""
    if p < end and buf[p] == MINUS:
        p += 1
    if p >= end or not 48 <= buf[p] <= 57:
        return -1
    p = p + 1 if buf[p] == 48 else _digit_run(buf, p, end)
    if p < end and buf[p] == DOT:
        p = _digit_run(buf, p + 1, end)
        if p < 0:
            return -1
    if p < end and (buf[p] == LOWER_E or buf[p] == UPPER_E):
        p += 1
        if p < end and (buf[p] == PLUS or buf[p] == MINUS):
            p += 1
        p = _digit_run(buf, p, end)
    return p


@helper
def _digit_run(buf, p, end):
    """The index after the digits starting at `p`, or -1 when there is none (JSON wants one)."""
    start = p
    while p < end and 48 <= buf[p] <= 57:
        p += 1
    return -1 if p == start else p


@helper
def _after_key(buf, p, end):
    """p at an object's key: the index of its value (after the key, `:` and blanks), or -1."""
    if p >= end or buf[p] != QUOTE:
        return -1
    q = _string_end(buf, p + 1, end)
    if q < 0:
        return -1
    p = _skip_space(buf, q + 1, end)
    if p >= end or buf[p] != COLON:
        return -1
    return _skip_space(buf, p + 1, end)


@helper
def _skip_value(buf, p, end):
    """Skips one JSON value, checked as json.loads checks it; the index after it, or -1.

    A key the engine does not read (`cts`, `seq`, ...) must still hold valid JSON, else the
    reference rejects the line and the two would disagree. No recursion (numba): the open
    containers are bits of `objects` (1 an object, 0 an array), at most MAX_NESTING deep.
    """
    objects = 0
    depth = 0
    p = _skip_space(buf, p, end)
    while True:
        # a value starts at p
        if p >= end:
            return -1
        c = buf[p]
        closed = False  # whether an empty container was just opened and closed
        if c == LBRACE or c == LBRACKET:  # noqa: SIM109 - numba: two compares, no tuple
            if depth == MAX_NESTING:
                return -1
            is_object = c == LBRACE
            if is_object:
                objects |= 1 << depth
            else:
                objects &= ~(1 << depth)
            depth += 1
            p = _skip_space(buf, p + 1, end)
            if p < end and buf[p] == (RBRACE if is_object else RBRACKET):
                p += 1
                depth -= 1
                closed = True
            elif is_object:
                p = _after_key(buf, p, end)
                if p < 0:
                    return -1
                continue
            else:
                continue
        elif c == QUOTE:
            q = _string_end(buf, p + 1, end)
            p = -1 if q < 0 else q + 1
        elif c == 116:
            p = p + 4 if _equals(buf, p, min(p + 4, end), WORD_TRUE) else -1
        elif c == 102:
            p = p + 5 if _equals(buf, p, min(p + 5, end), WORD_FALSE) else -1
        elif c == 110:
            p = p + 4 if _equals(buf, p, min(p + 4, end), WORD_NULL) else -1
        else:
            p = _skip_number(buf, p, end)
        if p < 0:
            return -1
        if not closed and depth == 0:
            return p
        # after a value: close containers until one goes on with a comma
        while depth > 0:
            p = _skip_space(buf, p, end)
            if p >= end:
                return -1
            is_object = ((objects >> (depth - 1)) & 1) == 1
            c = buf[p]
            if c == COMMA:
                p = _skip_space(buf, p + 1, end)
                if is_object:
                    p = _after_key(buf, p, end)
                    if p < 0:
                        return -1
                break
            if c != (RBRACE if is_object else RBRACKET):
                return -1
            p += 1
            depth -= 1
        if depth == 0:
            return p


@helper
def _compact_level(buf, p, end):
    """A level written without blanks, `["84325.10","0.512"]`, p just past its `[`.

    Returns (px, sz, index after the `]`), or index -1 when the level has another shape: the
    caller then parses it the general way, so blanks and bare numbers still read correctly.
    Levels are nearly all of a day's bytes (about 23 bytes each, 40-odd to a line).
    """
    if p >= end or buf[p] != QUOTE:
        return 0.0, 0.0, -1
    px, q = _compact_number(buf, p + 1, end)
    if q < 0 or q + 2 >= end or buf[q + 1] != COMMA or buf[q + 2] != QUOTE:
        return 0.0, 0.0, -1
    sz, q = _compact_number(buf, q + 3, end)
    if q < 0 or q + 1 >= end or buf[q + 1] != RBRACKET:
        return 0.0, 0.0, -1
    return px, sz, q + 2


@helper
def _number_then(buf, p, end, closer):
    """Blanks, a number, blanks, then the byte `closer`: (value, index after it, status)."""
    value, p, status = _parse_decimal(buf, _skip_space(buf, p, end), end)
    if status != OK:
        return 0.0, p, status
    p = _skip_space(buf, p, end)
    if p >= end or buf[p] != closer:
        return 0.0, p, E_LEVEL
    return value, p + 1, OK


@helper
def _general_level(buf, p, end):
    """A level in any valid spelling, p just past its `[`: (px, sz, index after `]`, status)."""
    px, p, status = _number_then(buf, p, end, COMMA)
    if status != OK:
        return 0.0, 0.0, p, status
    sz, p, status = _number_then(buf, p, end, RBRACKET)
    return px, sz, p, status


@helper
def _parse_levels(buf, p, end, out_px, out_sz, side, first, capacity):
    """`[[px, sz], ...]` into out_*[side, first:first + capacity]: (count, next, status)."""
    p = _skip_space(buf, p, end)
    if p >= end or buf[p] != LBRACKET:
        return 0, p, E_LEVEL
    p = _skip_space(buf, p + 1, end)
    n = 0
    if p < end and buf[p] == RBRACKET:
        return 0, p + 1, OK
    while p < end:
        if buf[p] != LBRACKET:
            p = _skip_space(buf, p, end)  # blanks after a comma
            if p >= end or buf[p] != LBRACKET:
                return n, p, E_LEVEL
        px, sz, q = _compact_level(buf, p + 1, end)
        if q < 0:
            px, sz, q, status = _general_level(buf, p + 1, end)
            if status != OK:
                return n, q, status
        if px < 0.0 or sz < 0.0:
            return n, q, E_NEGATIVE
        if n >= capacity:
            return n, q - 1, E_TOO_MANY_LEVELS
        out_px[side, first + n] = px
        out_sz[side, first + n] = sz
        n += 1
        p = q
        if p < end and buf[p] == COMMA:  # the compact separator, checked before any blank
            p += 1
            continue
        p = _skip_space(buf, p, end)
        if p < end and buf[p] == COMMA:
            p = _skip_space(buf, p + 1, end)
            continue
        if p < end and buf[p] == RBRACKET:
            return n, p + 1, OK
        return n, p, E_LEVEL
    return n, p, E_LEVEL


@helper
def _parse_data(buf, p, end, lv_px, lv_sz, first_bid, first_ask, capacity, counts2, state, symbol):
    """The `data` object: levels into the bid and ask arrays; returns (u, next, status)."""
    p = _skip_space(buf, p, end)
    if p >= end or buf[p] != LBRACE:
        return 0, p, E_NO_DATA
    p = _skip_space(buf, p + 1, end)
    u = -1
    have_u = False
    counts2[0] = 0
    counts2[1] = 0
    if p < end and buf[p] == RBRACE:
        return 0, p + 1, E_NO_U
    while p < end:
        if buf[p] != QUOTE:
            return 0, p, E_CHAR
        key_end = _string_end(buf, p + 1, end)
        if key_end < 0:
            return 0, p, E_STRING
        key_start = p + 1
        p = _skip_space(buf, key_end + 1, end)
        if p >= end or buf[p] != COLON:
            return 0, p, E_CHAR
        p = _skip_space(buf, p + 1, end)
        if _equals(buf, key_start, key_end, KEY_B):
            n, p, status = _parse_levels(buf, p, end, lv_px, lv_sz, 0, first_bid, capacity)
            if status != OK:
                return 0, p, status
            counts2[0] = n
        elif _equals(buf, key_start, key_end, KEY_A):
            n, p, status = _parse_levels(buf, p, end, lv_px, lv_sz, 1, first_ask, capacity)
            if status != OK:
                return 0, p, status
            counts2[1] = n
        elif _equals(buf, key_start, key_end, KEY_U):
            u, p, ok = _parse_int(buf, p, end)
            if not ok:
                return 0, p, E_INT
            have_u = True
        elif _equals(buf, key_start, key_end, KEY_S) and p < end and buf[p] == QUOTE:
            q = _string_end(buf, p + 1, end)
            if q < 0:
                return 0, p, E_STRING
            if not _same_symbol(buf, p + 1, q, state, symbol):
                return 0, p + 1, E_SYMBOL
            p = q + 1
        else:
            p = _skip_value(buf, p, end)
            if p < 0:
                return 0, end, E_CHAR
        p = _skip_space(buf, p, end)
        if p < end and buf[p] == COMMA:
            p = _skip_space(buf, p + 1, end)
            continue
        if p < end and buf[p] == RBRACE:
            if not have_u:
                return 0, p + 1, E_NO_U
            return u, p + 1, OK
        return 0, p, E_CHAR
    return 0, p, E_CHAR


@helper
def _same_symbol(buf, start, stop, state, symbol):
    """Whether the symbol buf[start:stop] a message names is the file's (symbol[0]).

    The file's symbol is given (the name's) or else the first one a message names. One that
    differs is copied to symbol[1] for the error. A few bytes a message: no measurable cost.
    """
    n = stop - start
    known = state[S_SYMBOL_LEN]
    if known == 0 and n <= symbol.shape[1]:
        for i in range(n):
            symbol[0, i] = buf[start + i]
        state[S_SYMBOL_LEN] = n
        return True
    if n == known:
        same = True
        for i in range(n):
            if buf[start + i] != symbol[0, i]:
                same = False
                break
        if same:
            return True
    n = min(n, symbol.shape[1])
    for i in range(n):
        symbol[1, i] = buf[start + i]
    state[S_FOREIGN_LEN] = n
    return False


@helper
def _topic_symbol(buf, start, stop):
    """(200, index where `BTCUSDT` starts) from `orderbook.200.BTCUSDT`; (0, -1) for any other
    shape (the reference reads no topic, so an odd one is no error)."""
    n = TOPIC_PREFIX.shape[0]
    if stop - start <= n or not _equals(buf, start, start + n, TOPIC_PREFIX):
        return 0, -1
    depth = 0
    p = start + n
    while p < stop and 48 <= buf[p] <= 57:
        depth = depth * 10 + (buf[p] - 48)
        p += 1
    if p == start + n or p + 1 >= stop or buf[p] != DOT:
        return 0, -1
    return depth, p + 1


@helper
def parse_message(buf, p, end, lv_px, lv_sz, first_bid, first_ask, capacity, counts2, state, symbol):
    """One line: returns (status, is_snapshot, ts, u, error_position)."""
    p = _skip_space(buf, p, end)
    if p >= end or buf[p] != LBRACE:
        return E_NOT_OBJECT, False, 0, 0, p
    p = _skip_space(buf, p + 1, end)
    kind = -1  # 1 snapshot, 0 delta
    ts = 0
    have_ts = False
    have_data = False
    u = 0
    while p < end:
        if buf[p] != QUOTE:
            return E_CHAR, False, 0, 0, p
        key_end = _string_end(buf, p + 1, end)
        if key_end < 0:
            return E_STRING, False, 0, 0, p
        key_start = p + 1
        p = _skip_space(buf, key_end + 1, end)
        if p >= end or buf[p] != COLON:
            return E_CHAR, False, 0, 0, p
        p = _skip_space(buf, p + 1, end)
        if _equals(buf, key_start, key_end, KEY_TYPE):
            if p >= end or buf[p] != QUOTE:
                return E_TYPE, False, 0, 0, p
            q = _string_end(buf, p + 1, end)
            if q < 0:
                return E_STRING, False, 0, 0, p
            if _equals(buf, p + 1, q, WORD_SNAPSHOT):
                kind = 1
            elif _equals(buf, p + 1, q, WORD_DELTA):
                kind = 0
            else:
                return E_TYPE, False, 0, 0, p
            p = q + 1
        elif _equals(buf, key_start, key_end, KEY_TS):
            ts, p, ok = _parse_int(buf, p, end)
            if not ok:
                return E_INT, False, 0, 0, p
            have_ts = True
        elif _equals(buf, key_start, key_end, KEY_DATA):
            u, p, status = _parse_data(buf, p, end, lv_px, lv_sz, first_bid, first_ask, capacity, counts2,
                                       state, symbol)
            if status != OK:
                return status, False, 0, 0, p
            have_data = True
        elif _equals(buf, key_start, key_end, KEY_TOPIC) and p < end and buf[p] == QUOTE:
            q = _string_end(buf, p + 1, end)
            if q < 0:
                return E_STRING, False, 0, 0, p
            depth, at = _topic_symbol(buf, p + 1, q)
            if at >= 0:
                if state[S_SOURCE_DEPTH] == 0:
                    state[S_SOURCE_DEPTH] = depth
                if not _same_symbol(buf, at, q, state, symbol):
                    return E_SYMBOL, False, 0, 0, at
            p = q + 1
        else:
            p = _skip_value(buf, p, end)
            if p < 0:
                return E_CHAR, False, 0, 0, end
        p = _skip_space(buf, p, end)
        if p < end and buf[p] == COMMA:
            p = _skip_space(buf, p + 1, end)
            continue
        if p < end and buf[p] == RBRACE:
            if _skip_space(buf, p + 1, end) != end:
                return E_CHAR, False, 0, 0, p + 1
            if kind < 0:
                return E_NO_TYPE, False, 0, 0, p
            if not have_ts:
                return E_NO_TS, False, 0, 0, p
            if not have_data:
                return E_NO_DATA, False, 0, 0, p
            return OK, kind == 1, ts, u, p
        return E_CHAR, False, 0, 0, p
    return E_NOT_OBJECT, False, 0, 0, p


# --- the book --------------------------------------------------------------------------------


@helper
def _find(levels, lo, hi, key):
    """First index i in lo..hi with levels[i, 0] >= key (keys ascending).

    Branch-free halving: updates land anywhere in the book, so a branchy search mispredicts
    about half its steps, and those stalls cost more than the comparisons.
    """
    base = lo
    n = hi - lo
    while n > 1:
        half = n >> 1
        base = base + half if levels[base + half - 1, 0] < key else base
        n -= half
    if n == 1 and levels[base, 0] < key:
        base += 1
    return base


@helper
def _find_from(levels, lo, hi, hint, key):
    """As _find, starting from `hint`: the answer when it is at or just below hint is cheap.

    A message lists its levels best first, so each one lies below the one before it, mostly
    a few rows away: galloping down from there (1, 2, 4, ... rows) takes a handful of steps
    where a search over the whole side takes log2 of its depth. A hint that does not hold
    (levels[hint] < key: the message is out of order) falls back to the whole side.
    """
    if hint < hi and levels[hint, 0] < key:
        return _find(levels, lo, hi, key)
    top = hint  # the answer is in lo..top
    step = 1
    while top - step >= lo:
        probe = top - step
        if levels[probe, 0] < key:
            return _find(levels, probe + 1, top, key)
        top = probe
        step *= 2
    return _find(levels, lo, top, key)


@intrinsic
def _move(typingctx, arr, dst, src, count):
    """arr[dst:dst+count] = arr[src:src+count], overlap allowed: one llvm.memmove.

    numba's own element loops stay scalar (about 1 ns an element); shifting the book is the
    replay's main cost, and memmove does it several times faster.
    """
    sig = types.void(arr, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        cgutils.raw_memmove(
            builder, builder.gep(array.data, [args[1]]), builder.gep(array.data, [args[2]]),
            args[3], itemsize,
        )

    return sig, codegen


@helper
def _shift(levels, dst, src, count):
    """levels[dst:dst+count] = levels[src:src+count] for (key, size) rows, in one memmove."""
    _move(levels, 2 * dst, 2 * src, 2 * count)


@helper
def _recenter(levels, lo, hi):
    """Moves the levels to the middle of their array so both ends have room again."""
    n = hi - lo
    new_lo = (levels.shape[0] - n) // 2
    _shift(levels, new_lo, lo, n)
    return new_lo, new_lo + n


@helper
def _set_level(levels, lo, hi, hint, key, size, max_levels, counts):
    """Sets (or deletes, size 0) one level of an ascending side held in levels[lo:hi].

    Rows are (key, size). The side sits in the middle of an array twice its capacity, and an
    insert or delete moves whichever part is shorter, so both the busy top (hi end) and the
    window edge (lo end) are cheap. `hint` is where the search starts (see _find_from).
    Returns the new (lo, hi) and the hint for a next, deeper key: an index whose key is at
    least this one's.
    """
    i = _find_from(levels, lo, hi, hint, key)
    if i < hi and levels[i, 0] == key:
        if size != 0.0:
            levels[i, 1] = size
            return lo, hi, i
        if i - lo < hi - 1 - i:
            _shift(levels, lo + 1, lo, i - lo)
            return lo + 1, hi, i + 1
        _shift(levels, i, i + 1, hi - 1 - i)
        return lo, hi - 1, i
    if size == 0.0:
        return lo, hi, i  # deleting an absent level: ignored
    if hi - lo == max_levels:
        # Full: the deepest level (at lo) gives way; a new level deeper than all is dropped.
        counts[C_OVERFLOW] += 1
        if i == lo:
            return lo, hi, i
        lo += 1
    if lo == 0 or hi == levels.shape[0]:
        new_lo, hi = _recenter(levels, lo, hi)
        i += new_lo - lo
        lo = new_lo
    if i - lo < hi - i:
        _shift(levels, lo - 1, lo, i - lo)
        i -= 1
        lo -= 1
    else:
        _shift(levels, i + 1, i, hi - i)
        hi += 1
    levels[i, 0] = key
    levels[i, 1] = size
    return lo, hi, i


@helper
def clear_book(state, book):
    middle = book.shape[1] // 2
    for side in range(2):
        state[S_LO + side] = middle
        state[S_HI + side] = middle


@helper
def _apply(book, state, lv_px, lv_sz, first_bid, first_ask, n_bids, n_asks, is_snapshot, max_levels,
           counts):
    """One message: levels lv_*[0, first_bid:first_bid + n_bids] and the same for asks.

    Offsets and counts come as integers, so the caller makes no array view per message.
    """
    if is_snapshot:
        clear_book(state, book)
    for side in range(2):
        sign = 1.0 if side == 0 else -1.0  # asks are stored negated, best (lowest) last
        lo = state[S_LO + side]
        hi = state[S_HI + side]
        levels = book[side]
        hint = hi
        first = first_bid if side == 0 else first_ask
        for i in range(first, first + (n_bids if side == 0 else n_asks)):
            lo, hi, hint = _set_level(levels, lo, hi, hint, sign * lv_px[side, i],
                                      lv_sz[side, i], max_levels, counts)
        state[S_LO + side] = lo
        state[S_HI + side] = hi
    bid_lo, bid_hi = state[S_LO], state[S_HI]
    ask_lo, ask_hi = state[S_LO + 1], state[S_HI + 1]
    if bid_hi == bid_lo or ask_hi == ask_lo:
        return
    best_bid = book[0, bid_hi - 1, 0]
    best_ask = -book[1, ask_hi - 1, 0]
    if best_bid < best_ask:
        return
    counts[C_CROSSED] += 1
    touched_bids = n_bids > 0
    touched_asks = n_asks > 0
    if touched_bids and not touched_asks:
        while ask_hi > ask_lo and -book[1, ask_hi - 1, 0] <= best_bid:
            ask_hi -= 1
            counts[C_CROSSED_REMOVED] += 1
        state[S_HI + 1] = ask_hi
    elif touched_asks and not touched_bids:
        while bid_hi > bid_lo and book[0, bid_hi - 1, 0] >= best_ask:
            bid_hi -= 1
            counts[C_CROSSED_REMOVED] += 1
        state[S_HI] = bid_hi


@helper
def _compare_snapshot(book, state, lv_px, lv_sz, first_bid, first_ask, n_bids, n_asks, ts, counts, diff):
    """Compares the book with a snapshot about to replace it (or, after the day, to be skipped).

    Level by level over the depth the snapshot carries: its i-th bid (ask), in the order the
    message lists them (best first, as Bybit writes them), against our i-th best; price and
    size must be equal floats (both parsed from the same decimal strings). Bids first, then
    asks; the first mismatching level of the day's first disagreeing snapshot is kept in
    state[S_DIFF_*] and diff[D_*]. Runs only at a snapshot, so it costs nothing per delta.
    The caller decides whether the book is worth comparing (see apply_batch).
    """
    counts[C_SNAP_COMPARED] += 1
    repaired = counts[C_CROSSED_REMOVED] > state[S_REMOVED_AT_SNAPSHOT]
    if repaired:
        counts[C_SNAP_AFTER_REPAIR] += 1
    for side in range(2):
        sign = 1.0 if side == 0 else -1.0
        lo = state[S_LO + side]
        hi = state[S_HI + side]
        first = first_bid if side == 0 else first_ask
        for i in range(n_bids if side == 0 else n_asks):
            theirs_px = lv_px[side, first + i]
            theirs_sz = lv_sz[side, first + i]
            ours_px = np.nan
            ours_sz = np.nan
            if hi - 1 - i >= lo:
                ours_px = sign * book[side, hi - 1 - i, 0]
                ours_sz = book[side, hi - 1 - i, 1]
            if ours_px == theirs_px and ours_sz == theirs_sz:
                continue
            if counts[C_SNAP_DISAGREEING] == 0:
                state[S_DIFF_SIDE] = side
                state[S_DIFF_LEVEL] = i
                state[S_DIFF_TS] = ts
                state[S_DIFF_REPAIR] = 1 if repaired else 0
                diff[D_OURS_PX] = ours_px
                diff[D_OURS_SZ] = ours_sz
                diff[D_THEIRS_PX] = theirs_px
                diff[D_THEIRS_SZ] = theirs_sz
            counts[C_SNAP_DISAGREEING] += 1
            return
    counts[C_SNAP_AGREEING] += 1


@helper
def _copy_top(book, state, n_levels, out):
    """Top `n_levels` of each side, best first, into out[4, :] (bid_px, bid_sz, ask_px, ask_sz)."""
    bid_hi = state[S_HI]
    ask_hi = state[S_HI + 1]
    for i in range(min(n_levels, bid_hi - state[S_LO])):
        out[0, i] = book[0, bid_hi - 1 - i, 0]
        out[1, i] = book[0, bid_hi - 1 - i, 1]
    for i in range(min(n_levels, ask_hi - state[S_LO + 1])):
        out[2, i] = -book[1, ask_hi - 1 - i, 0]
        out[3, i] = book[1, ask_hi - 1 - i, 1]


# --- sampling ----------------------------------------------------------------------------------


@helper
def _emit_sample(k, book, state, params, second_valid, second_stats,
                 minute_levels, minute_imbalance, captured, imbalance_depths):
    bid_lo, bid_hi = state[S_LO], state[S_HI]
    ask_lo, ask_hi = state[S_LO + 1], state[S_HI + 1]
    sample_time = params[P_DAY_START] + (k + 1) * 1000
    valid = (
        state[S_HAVE_SNAPSHOT] == 1
        and bid_hi > bid_lo
        and ask_hi > ask_lo
        # not `sample_time - last_ts <= ...`: a ts near int64's minimum would wrap that around
        and state[S_LAST_TS] >= sample_time - params[P_MAX_SILENCE_MS]
    )
    out_levels = params[P_OUT_LEVELS]
    if k < params[P_CAPTURE_SECONDS]:
        _copy_top(book, state, out_levels, captured[k])
    if not valid:
        return
    bid_px = book[0, bid_hi - 1, 0]
    bid_sz = book[0, bid_hi - 1, 1]
    ask_px = -book[1, ask_hi - 1, 0]
    ask_sz = book[1, ask_hi - 1, 1]
    second_valid[k] = 1
    second_stats[0, k] = (bid_px + ask_px) / 2.0
    second_stats[1, k] = (bid_px * ask_sz + ask_px * bid_sz) / (bid_sz + ask_sz)
    second_stats[2, k] = ask_px - bid_px
    if k % 60 != 59:
        return
    m = k // 60
    _copy_top(book, state, out_levels, minute_levels[m])
    for d in range(imbalance_depths.shape[0]):
        depth = imbalance_depths[d]
        bids = 0.0
        asks = 0.0
        for i in range(min(depth, bid_hi - bid_lo)):
            bids += book[0, bid_hi - 1 - i, 1]
        for i in range(min(depth, ask_hi - ask_lo)):
            asks += book[1, ask_hi - 1 - i, 1]
        minute_imbalance[m, d] = (bids - asks) / (bids + asks)


@helper
def emit_until(limit_second, book, state, params, second_valid, second_stats,
               minute_levels, minute_imbalance, captured, imbalance_depths):
    """Emits every sample k < limit_second not emitted yet."""
    k = state[S_NEXT_SECOND]
    while k < limit_second:
        _emit_sample(k, book, state, params, second_valid, second_stats,
                     minute_levels, minute_imbalance, captured, imbalance_depths)
        k += 1
    state[S_NEXT_SECOND] = k


# --- parsing a batch of lines (one thread) -----------------------------------------------------

B_MESSAGES = 0  # indexes into a batch's int64 header
B_LINES = 1
B_BAD_LINES = 2
B_LEVELS = 3  # + side: levels used
BATCH_HEADER = 5
STOP_NEED_INPUT, STOP_FULL, STOP_ERROR = 0, 1, 2


@njit(cache=True, nogil=True)
def parse_batch(buf, p, n, final, pstate, symbol, header, msg_ts, msg_u, msg_kind, msg_levels,
                lv_px, lv_sz, message_capacity, skip_bad_lines):
    """Parses complete lines of buf[p:n] (the last one too when `final`) into a batch.

    Stops when the batch is full, at an incomplete line, or at a malformed line (unless
    skip_bad_lines; then pstate holds the error). A line longer than pstate[S_MAX_LINE] bytes
    is a bad line too (an incomplete one is the caller's: see replay._Parser); a message naming
    another symbol than the file's stops it whatever skip_bad_lines says: the whole file is then
    suspect, not one line. Returns (offset where it stopped, STOP_*).
    Independent of the book, so it runs in its own thread while the book is replayed.
    """
    counts2 = np.zeros(2, dtype=np.int64)
    capacity = lv_px.shape[1]
    while p < n:
        m = header[B_MESSAGES]
        if m == msg_ts.shape[0] or header[B_LEVELS] + message_capacity > capacity or \
                header[B_LEVELS + 1] + message_capacity > capacity:
            return p, STOP_FULL
        q = _memchr(buf, p, n, NEWLINE)
        if q == n and not final:
            return p, STOP_NEED_INPUT
        line_end = q
        next_line = min(q + 1, n)
        if q - p > pstate[S_MAX_LINE]:
            pstate[S_LINE_NO] += 1
            header[B_LINES] += 1
            if skip_bad_lines:
                header[B_BAD_LINES] += 1
                p = next_line
                continue
            pstate[S_ERROR_CODE] = E_LONG
            pstate[S_ERROR_LINE] = pstate[S_LINE_NO]
            pstate[S_ERROR_COLUMN] = pstate[S_MAX_LINE] + 1
            return p, STOP_ERROR
        while line_end > p and _is_space(buf[line_end - 1]):
            line_end -= 1
        start = _skip_space(buf, p, line_end)
        pstate[S_LINE_NO] += 1
        if start == line_end:
            p = next_line
            continue
        header[B_LINES] += 1
        status, is_snapshot, ts, u, where = parse_message(
            buf, start, line_end, lv_px, lv_sz, header[B_LEVELS], header[B_LEVELS + 1], message_capacity,
            counts2, pstate, symbol,
        )
        if status != OK:
            if skip_bad_lines and status != E_SYMBOL:
                header[B_BAD_LINES] += 1
                p = next_line
                continue
            pstate[S_ERROR_CODE] = status
            pstate[S_ERROR_LINE] = pstate[S_LINE_NO]
            pstate[S_ERROR_COLUMN] = where - start + 1
            return p, STOP_ERROR
        msg_ts[m] = ts
        msg_u[m] = u
        msg_kind[m] = 1 if is_snapshot else 0
        msg_levels[m, 0] = counts2[0]
        msg_levels[m, 1] = counts2[1]
        header[B_LEVELS] += counts2[0]
        header[B_LEVELS + 1] += counts2[1]
        header[B_MESSAGES] = m + 1
        p = next_line
    return p, STOP_NEED_INPUT


# --- replaying a parsed batch (the other thread) -----------------------------------------------


@helper
def _book_comparable(state):
    """Whether a snapshot arriving now is compared: a snapshot built the book and it holds a level."""
    return state[S_HAVE_SNAPSHOT] == 1 and (
        state[S_HI] > state[S_LO] or state[S_HI + 1] > state[S_LO + 1]
    )


@njit(cache=True, nogil=True)
def apply_batch(header, msg_ts, msg_u, msg_kind, msg_levels, lv_px, lv_sz, state, params, counts,
                book, second_valid, second_stats, minute_levels, minute_imbalance,
                minute_msgs, captured, imbalance_depths, diff):
    """Replays a parsed batch in order: bucketing by ts, sequence checks, book, samples.

    A snapshot that meets a valid book (one snapshot applied before, some level on either side)
    is first compared with it (`_compare_snapshot`): the day's first snapshot is not. So is the
    next day's opening snapshot at the file's end (at or after the day's end, never applied),
    unless a delta of the next day came before it (the book is then behind: not compared).
    """
    first_bid = 0
    first_ask = 0
    day_start = params[P_DAY_START]
    day_end = params[P_DAY_END]
    counts[C_LINES] += header[B_LINES]
    counts[C_BAD_LINES] += header[B_BAD_LINES]
    for m in range(header[B_MESSAGES]):
        ts = msg_ts[m]
        n_bids = msg_levels[m, 0]
        n_asks = msg_levels[m, 1]
        is_snapshot = msg_kind[m] == 1
        counts[C_MESSAGES] += 1
        if state[S_HAVE_TS] == 0:  # where the file's time lies, whatever its name says
            state[S_HAVE_TS] = 1
            state[S_FIRST_TS] = ts
        state[S_LAST_MSG_TS] = ts
        if ts >= day_end:
            counts[C_AFTER_DAY] += 1
            if not is_snapshot:
                state[S_STALE] = 1
            elif state[S_STALE] == 0 and _book_comparable(state):
                _compare_snapshot(book, state, lv_px, lv_sz, first_bid, first_ask, n_bids, n_asks, ts,
                                  counts, diff)
                state[S_REMOVED_AT_SNAPSHOT] = counts[C_CROSSED_REMOVED]
        elif not is_snapshot and state[S_HAVE_SNAPSHOT] == 0:
            counts[C_BEFORE_SNAPSHOT] += 1
        else:
            if ts >= day_start + 1000:
                emit_until(min((ts - day_start) // 1000, 86400), book, state,
                           params, second_valid, second_stats, minute_levels, minute_imbalance,
                           captured, imbalance_depths)
            if is_snapshot:
                if _book_comparable(state):
                    _compare_snapshot(book, state, lv_px, lv_sz, first_bid, first_ask, n_bids, n_asks, ts,
                                      counts, diff)
                state[S_REMOVED_AT_SNAPSHOT] = counts[C_CROSSED_REMOVED]
                counts[C_SNAPSHOTS] += 1
                state[S_HAVE_SNAPSHOT] = 1
            else:
                counts[C_DELTAS] += 1
                if state[S_HAVE_U] == 1 and msg_u[m] != state[S_LAST_U] + 1:
                    counts[C_SEQ_GAPS] += 1
            state[S_HAVE_U] = 1
            state[S_LAST_U] = msg_u[m]
            _apply(book, state, lv_px, lv_sz, first_bid, first_ask, n_bids, n_asks, is_snapshot,
                   params[P_MAX_LEVELS], counts)
            state[S_LAST_TS] = ts
            if ts < day_start:
                counts[C_BEFORE_DAY] += 1
            else:
                minute_msgs[(ts - day_start) // 60000] += 1
        first_bid += n_bids
        first_ask += n_asks


@njit(cache=True, nogil=True)
def minute_stats(second_valid, second_stats, out):
    """Per minute: mid open/high/low/close, micro mean, spread mean, valid seconds (NaN if none).

    Sums run in time order so an independent replay can reproduce them exactly.
    """
    for m in range(out.shape[0]):
        count = 0
        micro_sum = 0.0
        spread_sum = 0.0
        for k in range(60 * m, 60 * m + 60):
            if second_valid[k] == 0:
                continue
            mid = second_stats[0, k]
            if count == 0:
                out[m, 0] = mid
                out[m, 1] = mid
                out[m, 2] = mid
            else:
                out[m, 1] = max(out[m, 1], mid)
                out[m, 2] = min(out[m, 2], mid)
            out[m, 3] = mid
            micro_sum += second_stats[1, k]
            spread_sum += second_stats[2, k]
            count += 1
        if count > 0:
            out[m, 4] = micro_sum / count
            out[m, 5] = spread_sum / count
        out[m, 6] = count
