"""The scalable GPT sample index (`index: block`): Megatron's semantics in O(documents / block) memory.

Same meaning as Megatron's three arrays (gpt_dataset.py), none of them materialized:

* Epochs. Each epoch is every document (sequence) of the split once, in a seeded random order;
  the token stream is epoch 0's documents back to back, then epoch 1's, and so on.
* Samples pack across document boundaries: sample s is tokens [s*L, s*L + L] of that stream
  (L = seq_length; consecutive samples share one token), S = (epochs x tokens - 1) // L of them.
* Served order: position i of the dataset is a keyed random permutation (a Feistel network with
  cycle walking, evaluated on the fly) of the samples that start in i's epoch. Epochs are served
  one after another, so after any whole number of epochs every sample -- hence every document --
  was served exactly once; a partial last epoch is a uniformly drawn subset of its samples.
  (Megatron permutes the samples of all full epochs together; keeping epochs apart is the stronger
  guarantee, and equals Megatron's rule for one epoch.) Any position is computed directly, so
  resuming at sample k needs no fast-forward.

The document order of epoch e, with the split's n documents laid out as a ROWS x nb grid (row r
holds documents [r*nb, (r+1)*nb), nb = ceil(n / ROWS)):

* every row is rotated by a random offset c_e[r], and column k of the rotated grid is block k: it
  holds one document from every row, i.e. documents spread over the whole split;
* the blocks are visited in a random order (block_order[e], a stored permutation of nb entries);
* inside a block the documents follow a random row permutation Q_e XOR-ed with a per-block key.

Only per-block numbers are stored: the blocks' cumulative token counts in visiting order
(int64 [epochs, nb + 1]), the visiting order and the per-block keys -- about 14 bytes per block of
ROWS documents per epoch. A sample is found by one binary search over the cumulative counts and
one pass over its block's ROWS document lengths.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ROWS = 128                     # documents per block (a power of two: the in-block XOR key needs it)
MASK64 = (1 << 64) - 1
FEISTEL_ROUNDS = 4
ARRAY_NAMES = ("cumulative", "order", "xor", "rotation", "rows")


def mix64(z):
    """splitmix64's finalizer on Python ints or uint64 numpy arrays (same results for both)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


TABLE_BITS = 16               # halves up to 16 bits use random lookup tables as round functions


class KeyedPermutation:
    """A keyed random permutation of [0, m): a 4-round Feistel network on the smallest power of two
    >= m (split into high and low halves), with cycle walking back into [0, m).

    Round r XORs one half with a function of the other: a random lookup table drawn from the
    seed (halves of at most TABLE_BITS bits), else splitmix64 of (half XOR key). `__call__` (one
    Python int) and `array` (numpy, vectorized) give identical results.
    """

    def __init__(self, m: int, seed: int, *salt: int):
        if m < 1:
            raise ValueError(f"cannot permute an empty range (m={m})")
        self.m = m
        total = max(2, (m - 1).bit_length())
        self.hi_bits, self.lo_bits = total // 2, total - total // 2
        rng = np.random.default_rng([seed, *salt])
        self.keys = [int(k) for k in rng.integers(0, 1 << 63, size=FEISTEL_ROUNDS, dtype=np.int64)]
        self.tables = None
        if self.lo_bits <= TABLE_BITS:
            self.tables = []
            for r in range(FEISTEL_ROUNDS):     # even rounds read hi (write lo), odd rounds the reverse
                source, target = (self.hi_bits, self.lo_bits) if r % 2 == 0 else (self.lo_bits, self.hi_bits)
                self.tables.append(rng.integers(0, 1 << target, size=1 << source, dtype=np.int64))
            self.table_lists = [t.tolist() for t in self.tables]

    def _once(self, x: int) -> int:
        lo_bits, lo_mask, hi_mask = self.lo_bits, (1 << self.lo_bits) - 1, (1 << self.hi_bits) - 1
        hi, lo = x >> lo_bits, x & lo_mask
        if self.tables is not None:
            t0, t1, t2, t3 = self.table_lists
            lo ^= t0[hi]
            hi ^= t1[lo]
            lo ^= t2[hi]
            hi ^= t3[lo]
        else:
            for r, k in enumerate(self.keys):
                if r % 2 == 0:
                    lo ^= mix64(hi ^ k) & lo_mask
                else:
                    hi ^= mix64(lo ^ k) & hi_mask
        return (hi << lo_bits) | lo

    def __call__(self, x: int) -> int:
        x = self._once(x)
        while x >= self.m:              # < 2 steps on average: the Feistel domain is < 2m
            x = self._once(x)
        return x

    def _once_array(self, x: np.ndarray) -> np.ndarray:
        lo_mask, hi_mask = (1 << self.lo_bits) - 1, (1 << self.hi_bits) - 1
        hi, lo = x >> self.lo_bits, x & lo_mask
        for r in range(FEISTEL_ROUNDS):
            if self.tables is not None:
                if r % 2 == 0:
                    lo = lo ^ self.tables[r][hi]
                else:
                    hi = hi ^ self.tables[r][lo]
            else:
                k = np.uint64(self.keys[r])
                if r % 2 == 0:
                    lo = lo ^ (mix64(hi.astype(np.uint64) ^ k) & np.uint64(lo_mask)).astype(np.int64)
                else:
                    hi = hi ^ (mix64(lo.astype(np.uint64) ^ k) & np.uint64(hi_mask)).astype(np.int64)
        return (hi << self.lo_bits) | lo

    def array(self, x: np.ndarray) -> np.ndarray:
        """The permutation of every element of x (ints in [0, m)); int64."""
        out = self._once_array(np.asarray(x, dtype=np.int64))
        pending = np.flatnonzero(out >= self.m)
        while len(pending):
            out[pending] = self._once_array(out[pending])
            pending = pending[out[pending] >= self.m]
        return out


def epoch_sample_starts(tokens_per_epoch: int, num_epochs: int, seq_length: int) -> list[int]:
    """First sample of each epoch (the samples whose first token lies in it), then S (the total)."""
    total = (num_epochs * tokens_per_epoch - 1) // seq_length
    starts = [(e * tokens_per_epoch + seq_length - 1) // seq_length for e in range(num_epochs)]
    return [min(s, total) for s in starts] + [total]


def build_block_arrays(sizes: np.ndarray, sequence_range: tuple[int, int], num_epochs: int,
                       seed: int) -> dict[str, np.ndarray]:
    """The stored part of the block index of sequences [first, end) of `sizes` over num_epochs.

    Reads every length once, row by row (the lengths may be a memory map larger than RAM);
    memory is O(num_epochs x nb). Returns
      cumulative int64 [E, nb + 1]: tokens before each visited block (last column = tokens per epoch),
      order int32/64 [E, nb]: block visited at each rank, xor uint16 [E, nb]: in-block key per rank,
      rotation int64 [E, ROWS]: row offsets c_e, rows int64 [E, ROWS]: row permutation Q_e.
    """
    first, end = sequence_range
    n = end - first
    nb = -(-n // ROWS)
    order_dtype = np.int32 if nb < np.iinfo(np.int32).max else np.int64
    rotation = np.empty((num_epochs, ROWS), np.int64)
    rows = np.empty((num_epochs, ROWS), np.int64)
    order = np.empty((num_epochs, nb), order_dtype)
    xor = np.empty((num_epochs, nb), np.uint16)
    for e in range(num_epochs):
        rng = np.random.default_rng([seed, e])
        rotation[e] = rng.integers(0, nb, size=ROWS)
        rows[e] = rng.permutation(ROWS)
        order[e] = rng.permutation(nb)
        xor[e] = rng.integers(0, ROWS, size=nb)
    totals = np.zeros((num_epochs, nb), np.int64)
    for r in range(ROWS):
        lo, hi = first + r * nb, min(first + (r + 1) * nb, end)
        if lo >= hi:
            break
        row = np.asarray(sizes[lo:hi], dtype=np.int64)
        length = hi - lo
        for e in range(num_epochs):
            c = int(rotation[e, r])   # block k holds the row's column (k + c) mod nb
            if c < length:
                totals[e, :length - c] += row[c:]
            head = min(c, length)
            totals[e, nb - c:nb - c + head] += row[:head]
    cumulative = np.zeros((num_epochs, nb + 1), np.int64)
    for e in range(num_epochs):
        np.cumsum(totals[e][order[e]], out=cumulative[e, 1:])
    return {"cumulative": cumulative, "order": order, "xor": xor, "rotation": rotation, "rows": rows}


@dataclass
class EpochTables:
    """What reading epoch e needs beyond the stored arrays, derived from them and the seed.

    For each in-block XOR key x ([x, slot] arrays): the first sequence id of each slot's row, the
    row's rotation, and the (slot, row length) pairs of rows shorter than nb (only those slots can
    be absent from a block); and the permutation of the epoch's samples.
    """

    row_start: np.ndarray
    rotation: np.ndarray
    short_slots: list[list[tuple[int, int]]]
    permutation: KeyedPermutation


class BlockSampleIndex:
    """Random access to the packed, shuffled samples described by `build_block_arrays`' arrays.

    `pieces(i)` lists the (sequence id, begin, end) token ranges of served sample i, which together
    hold seq_length + 1 tokens.
    """

    def __init__(self, arrays: dict[str, np.ndarray], sizes: np.ndarray, sequence_range: tuple[int, int],
                 num_samples: int, seq_length: int, seed: int):
        # Plain ndarray views of memory maps: np.memmap's per-access overhead costs more than the lookup.
        self.sizes = np.asarray(sizes)
        self.first, self.end = sequence_range
        self.n = self.end - self.first
        self.nb = -(-self.n // ROWS)
        self.seq_length = seq_length
        self.num_samples = num_samples
        self.cumulative = arrays["cumulative"]
        self.num_epochs = len(self.cumulative)
        self.cumulative_rows = [np.asarray(self.cumulative[e]) for e in range(self.num_epochs)]
        self.order, self.xor = np.asarray(arrays["order"]), np.asarray(arrays["xor"])
        self.tokens_per_epoch = int(self.cumulative[0, -1])
        self.starts = epoch_sample_starts(self.tokens_per_epoch, self.num_epochs, seq_length)
        self.seed = seed
        self.rows, self.rotation = arrays["rows"], arrays["rotation"]
        self.last = self.end - 1
        self._tables: OrderedDict[int, EpochTables] = OrderedDict()

    def epoch_tables(self, epoch: int) -> EpochTables:
        """The tables of `epoch`; training reads epochs in order, so 8 cached epochs suffice."""
        tables = self._tables.get(epoch)
        if tables is None:
            tables = self._tables[epoch] = self._build_epoch_tables(epoch)
            if len(self._tables) > 8:
                self._tables.popitem(last=False)
        return tables

    def _build_epoch_tables(self, epoch: int) -> EpochTables:
        slots = np.arange(ROWS)[None, :] ^ np.arange(ROWS)[:, None]           # [x, slot]
        row_lengths = np.clip(self.n - np.arange(ROWS) * self.nb, 0, self.nb)  # documents per row
        slot_rows = np.asarray(self.rows[epoch])[slots]
        short = row_lengths[slot_rows] < self.nb
        short_slots = [list(zip(np.flatnonzero(short[x]).tolist(),
                                row_lengths[slot_rows[x][short[x]]].tolist())) for x in range(ROWS)]
        lo, hi = self.starts[epoch], self.starts[epoch + 1]
        return EpochTables(slot_rows * self.nb + self.first, np.asarray(self.rotation[epoch])[slot_rows],
                           short_slots, KeyedPermutation(max(1, hi - lo), self.seed, epoch, 1))

    @property
    def num_available_samples(self) -> int:
        return self.starts[-1]

    def sample_of(self, i: int) -> int:
        """Stream sample served at position i: a permutation of i's epoch's samples."""
        e = 0
        while self.starts[e + 1] <= i:
            e += 1
        return self.starts[e] + self.epoch_tables(e).permutation(i - self.starts[e])

    def _slots(self, epoch: int, rank: int) -> tuple[np.ndarray, list[int]]:
        """(sequence id of each of the ROWS slots, the slots absent from this block) of a block."""
        k = int(self.order[epoch, rank])
        x = int(self.xor[epoch, rank])
        tables = self.epoch_tables(epoch)
        column = tables.rotation[x] + k
        column %= self.nb
        seq = column + tables.row_start[x]
        np.minimum(seq, self.last, out=seq)         # absent slots of short rows: any valid id, 0 tokens
        return seq, [slot for slot, row_length in tables.short_slots[x] if column[slot] >= row_length]

    def block(self, epoch: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(sequence ids, token counts) of the ROWS slots of the block at `rank` (absent slots: 0 tokens)."""
        seq, absent = self._slots(epoch, rank)
        lengths = self.sizes[seq]
        if absent:
            lengths[absent] = 0
        return seq, lengths

    def pieces(self, i: int) -> list[tuple[int, int, int]]:
        s = self.sample_of(i)
        position = s * self.seq_length
        epoch, q = divmod(position, self.tokens_per_epoch)
        cumulative = self.cumulative_rows[epoch]
        rank = int(cumulative.searchsorted(q, side="right")) - 1
        offset = q - int(cumulative[rank])
        seq, lengths = self.block(epoch, rank)
        ends = lengths.cumsum(dtype=np.int64)
        slot = int(ends.searchsorted(offset, side="right"))
        offset -= int(ends[slot - 1]) if slot else 0
        out, need = [], self.seq_length + 1
        while need:
            if slot == ROWS:                       # next block, next epoch
                rank += 1
                if rank == self.nb:
                    epoch, rank = epoch + 1, 0
                seq, lengths = self.block(epoch, rank)
                slot, offset = 0, 0
                continue
            take = min(int(lengths[slot]) - offset, need)
            if take > 0:
                out.append((int(seq[slot]), offset, offset + take))
                need -= take
            slot, offset = slot + 1, 0
        return out

    def epoch_documents(self, epoch: int) -> np.ndarray:
        """Every sequence id of the split in epoch `epoch`'s order (O(n): for tests and inspection)."""
        parts = []
        for rank in range(self.nb):
            seq, absent = self._slots(epoch, rank)
            parts.append(np.delete(seq, absent))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
