//! A mergeable latency sketch with relative-error quantiles (the DDSketch scheme): a value `v`
//! falls in the bucket `ceil(log_γ v)` with `γ = (1 + α) / (1 − α)`, so every quantile it
//! reports is within `α` (2%) of a value that was actually recorded. Two sketches merge by
//! adding bucket counts, so per-window sketches roll up into any coarser window or group
//! exactly as if the events had been recorded together.
//!
//! The buckets are stored sparsely (only the occupied ones, sorted), because the analytics
//! subsystem keeps thousands of small sketches: a dense store such as `sketches-ddsketch`'s
//! keeps a `u64`-sized slot for every bucket between the smallest and largest value (several
//! KB for latencies from 1 ms to 10 s), where a window's sketch here costs 8 bytes per
//! occupied bucket. The encoding ([`Sketch::encode`]) is a compact varint list for storage.

/// Relative accuracy of every reported quantile.
pub const RELATIVE_ACCURACY: f64 = 0.02;

/// `γ` and `ln γ` for [`RELATIVE_ACCURACY`].
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Encoding version byte (2: buckets of the 2% sketch).
const VERSION: u8 = 2;

/// A sketch of non-negative integer values (microseconds, in the gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    /// Values of zero.
    zeros: u32,
    /// (bucket index, count), sorted by index, no zero counts.
    bins: Vec<(u16, u32)>,
    /// All values recorded (kept, so quantiles need one partial walk).
    total: u64,
}

/// A sketch that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed latency sketch: {0}")]
pub struct DecodeError(&'static str);

fn ln_gamma() -> f64 {
    GAMMA.ln()
}

fn index_of(value: u64) -> u16 {
    // Values are at least 1 here; u64::MAX maps to ~2218, well inside u16.
    let index = ((value as f64).ln() / ln_gamma()).ceil();
    if index <= 0.0 {
        0
    } else if index >= f64::from(u16::MAX) {
        u16::MAX
    } else {
        index as u16
    }
}

/// Buckets whose values are tabulated: every index a `u64` can reach (`u64::MAX` maps to
/// about 1110 at 2%), with room to spare.
const TABULATED: usize = 1_280;

/// The value a bucket stands for: the point whose relative distance to both bucket bounds
/// is `α`. Read from a table built once with the same formula, so answers are bit for bit
/// what [`value_formula`] gives (a profile of the 7-day query showed `powi` at ~5%).
fn value_of(index: u16) -> f64 {
    static VALUES: std::sync::LazyLock<Box<[f64]>> = std::sync::LazyLock::new(|| {
        (0..TABULATED)
            .map(|index| value_formula(u16::try_from(index).unwrap_or(u16::MAX)))
            .collect()
    });
    VALUES
        .get(usize::from(index))
        .copied()
        .unwrap_or_else(|| value_formula(index))
}

// Never inlined: inlined, LLVM computes `powi` (a pure intrinsic) before the branch and the
// table saves nothing.
#[cold]
#[inline(never)]
fn value_formula(index: u16) -> f64 {
    if index == 0 {
        return 1.0;
    }
    2.0 * GAMMA.powi(i32::from(index)) / (GAMMA + 1.0)
}

impl Sketch {
    /// An empty sketch.
    pub const fn new() -> Self {
        Sketch {
            zeros: 0,
            bins: Vec::new(),
            total: 0,
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.zeros == 0 && self.bins.is_empty()
    }

    /// Values of zero recorded.
    pub fn zeros(&self) -> u32 {
        self.zeros
    }

    /// The occupied buckets: (bucket index, count), sorted by index, no zero counts.
    pub fn bins(&self) -> &[(u16, u32)] {
        &self.bins
    }

    /// Occupied buckets (a measure of its size).
    pub fn buckets(&self) -> usize {
        self.bins.len()
    }

    /// Gives back spare capacity (for sketches that will not grow again).
    pub fn shrink_to_fit(&mut self) {
        self.bins.shrink_to_fit();
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<(u16, u32)>()
    }

    /// Records one value.
    pub fn add(&mut self, value: u64) {
        self.add_n(value, 1);
    }

    /// Records `n` copies of a value.
    pub fn add_n(&mut self, value: u64, n: u32) {
        if n == 0 {
            return;
        }
        self.total += u64::from(n);
        if value == 0 {
            self.zeros = self.zeros.saturating_add(n);
            return;
        }
        let index = index_of(value);
        match self.bins.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(at) => self.bins[at].1 = self.bins[at].1.saturating_add(n),
            Err(at) => self.bins.insert(at, (index, n)),
        }
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Sketch) {
        self.zeros = self.zeros.saturating_add(other.zeros);
        self.total += other.total;
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.bins.clone_from(&other.bins);
            return;
        }
        // In place when every bucket of `other` is already here (the common case once a few
        // sketches of similar traffic have been merged): no allocation.
        let mut at = 0;
        let in_place = other.bins.iter().all(|&(index, _)| {
            while at < self.bins.len() && self.bins[at].0 < index {
                at += 1;
            }
            at < self.bins.len() && self.bins[at].0 == index
        });
        if in_place {
            let mut at = 0;
            for &(index, count) in &other.bins {
                while self.bins[at].0 < index {
                    at += 1;
                }
                self.bins[at].1 = self.bins[at].1.saturating_add(count);
            }
            return;
        }
        let mut merged = Vec::with_capacity(self.bins.len().max(other.bins.len()));
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, ca)), Some(&&(ib, cb))) => {
                    if ia == ib {
                        merged.push((ia, ca.saturating_add(cb)));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, ca));
                        a.next();
                    } else {
                        merged.push((ib, cb));
                        b.next();
                    }
                }
                (Some(&&bin), None) => {
                    merged.push(bin);
                    a.next();
                }
                (None, Some(&&bin)) => {
                    merged.push(bin);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.bins = merged;
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) by nearest rank, within 2% of the recorded value at that
    /// rank; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.total;
        if count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Nearest rank: the smallest recorded value with at least q of all values at or
        // below it (0-based here), so a small sample's p99 is its largest value.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count) - 1;
        let mut seen = u64::from(self.zeros);
        if rank < seen {
            return Some(0.0);
        }
        for &(index, bin_count) in &self.bins {
            seen += u64::from(bin_count);
            if rank < seen {
                return Some(value_of(index));
            }
        }
        self.bins.last().map(|&(index, _)| value_of(index))
    }

    /// The compact binary form: version, zero count, then (index delta, count) varints.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.bins.len() * 3);
        out.push(VERSION);
        put_varint(&mut out, u64::from(self.zeros));
        put_varint(&mut out, self.bins.len() as u64);
        let mut previous = 0u16;
        for &(index, count) in &self.bins {
            put_varint(&mut out, u64::from(index - previous));
            put_varint(&mut out, u64::from(count));
            previous = index;
        }
        out
    }

    /// Reads [`Sketch::encode`]'s form; an empty input is an empty sketch.
    pub fn decode(bytes: &[u8]) -> Result<Sketch, DecodeError> {
        let Some((&version, mut rest)) = bytes.split_first() else {
            return Ok(Sketch::new());
        };
        if version != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let zeros = u32::try_from(get_varint(&mut rest)?).map_err(|_| DecodeError("count"))?;
        let len = get_varint(&mut rest)?;
        if len > u64::from(u16::MAX) + 1 {
            return Err(DecodeError("too many buckets"));
        }
        let mut bins = Vec::with_capacity(len as usize);
        let mut total = u64::from(zeros);
        let mut index = 0u16;
        for n in 0..len {
            let delta = u16::try_from(get_varint(&mut rest)?).map_err(|_| DecodeError("index"))?;
            if n > 0 && delta == 0 {
                return Err(DecodeError("unsorted buckets"));
            }
            index = index
                .checked_add(delta)
                .ok_or(DecodeError("index overflow"))?;
            let count = u32::try_from(get_varint(&mut rest)?).map_err(|_| DecodeError("count"))?;
            if count == 0 {
                return Err(DecodeError("empty bucket"));
            }
            total += u64::from(count);
            bins.push((index, count));
        }
        if !rest.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Sketch { zeros, bins, total })
    }
}

/// Buckets a quantile walk skips at a time while no rank falls in them (summed first,
/// which the compiler vectorises).
const WALK_CHUNK: usize = 16;

/// Quantiles [`SketchSum::quantiles_into`] computes in one call, at most.
pub const MAX_QUANTILES: usize = 8;

/// Buckets of an encoded sketch decoded onto the stack at a time by
/// [`SketchSum::add_encoded`] (latency sketches of real traffic hold a few dozen).
const ENCODED_CHUNK: usize = 64;

/// A sum of sketches being built by a query: dense counts over the bucket range seen so far,
/// so adding a sketch costs one addition per bucket it has, with no allocation once the range
/// is known (merging sparse sketches costs a pass over both and a new vector).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SketchSum {
    zeros: u64,
    /// Index of `counts[0]`.
    offset: u16,
    counts: Vec<u64>,
    total: u64,
}

impl SketchSum {
    /// Values summed.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Makes `counts` cover the indexes `low..=high` (`low <= high`).
    fn cover(&mut self, low: u16, high: u16) {
        if self.counts.is_empty() {
            self.offset = low;
            self.counts.resize(usize::from(high - low) + 1, 0);
            return;
        }
        if low < self.offset {
            let grow = usize::from(self.offset - low);
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = low;
        }
        let end = usize::from(high - self.offset) + 1;
        if end > self.counts.len() {
            self.counts.resize(end, 0);
        }
    }

    /// Adds a sketch.
    pub fn add(&mut self, sketch: &Sketch) {
        self.zeros += u64::from(sketch.zeros);
        self.total += sketch.total;
        let (Some(&(low, _)), Some(&(high, _))) = (sketch.bins.first(), sketch.bins.last()) else {
            return;
        };
        self.cover(low, high);
        let offset = self.offset;
        for &(index, count) in &sketch.bins {
            // Within `counts`: covered just above.
            if let Some(slot) = self.counts.get_mut(usize::from(index - offset)) {
                *slot += u64::from(count);
            }
        }
    }

    /// Adds a sketch straight from its encoded form (no intermediate sketch). The buckets
    /// are decoded a chunk at a time onto the stack, the range is grown once per chunk, and
    /// then they are added without further checks; a sketch of up to [`ENCODED_CHUNK`]
    /// buckets (all real ones) is added whole or not at all.
    pub fn add_encoded(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let Some((&version, mut rest)) = bytes.split_first() else {
            return Ok(());
        };
        if version != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let zeros = get_varint(&mut rest)?;
        let len = get_varint(&mut rest)?;
        let mut chunk = [(0u16, 0u64); ENCODED_CHUNK];
        let mut index = 0u16;
        let mut added = zeros;
        let mut decoded = 0u64;
        while decoded < len {
            let take = usize::try_from(len - decoded)
                .map_or(ENCODED_CHUNK, |left| left.min(ENCODED_CHUNK));
            for slot in &mut chunk[..take] {
                let delta =
                    u16::try_from(get_varint(&mut rest)?).map_err(|_| DecodeError("index"))?;
                if decoded > 0 && delta == 0 {
                    return Err(DecodeError("unsorted buckets"));
                }
                index = index
                    .checked_add(delta)
                    .ok_or(DecodeError("index overflow"))?;
                let count = get_varint(&mut rest)?;
                *slot = (index, count);
                added += count;
                decoded += 1;
            }
            let chunk = &chunk[..take];
            if let (Some(&(low, _)), Some(&(high, _))) = (chunk.first(), chunk.last()) {
                self.cover(low, high);
                let offset = self.offset;
                for &(index, count) in chunk {
                    if let Some(slot) = self.counts.get_mut(usize::from(index - offset)) {
                        *slot += count;
                    }
                }
            }
        }
        self.zeros += zeros;
        self.total += added;
        Ok(())
    }

    /// Adds a sketch given as its parts ([`Sketch::zeros`], and [`Sketch::bins`] split into
    /// indexes and counts of the same length, indexes ascending): what a cache can hold
    /// without a vector per sketch, added with no decoding and one range check.
    pub fn add_sparse(&mut self, zeros: u32, indexes: &[u16], counts: &[u32]) {
        self.zeros += u64::from(zeros);
        self.total += u64::from(zeros);
        let (Some(&low), Some(&high)) = (indexes.first(), indexes.last()) else {
            return;
        };
        if low > high {
            return;
        }
        self.cover(low, high);
        let offset = self.offset;
        let mut added = 0u64;
        for (&index, &count) in indexes.iter().zip(counts) {
            if let Some(slot) = self.counts.get_mut(usize::from(index.wrapping_sub(offset))) {
                *slot += u64::from(count);
                added += u64::from(count);
            }
        }
        self.total += added;
    }

    /// Whether no buffer is held (nothing added yet).
    pub fn is_unallocated(&self) -> bool {
        self.counts.capacity() == 0
    }

    /// Empties the sum and hands back its buffer (none if it held none), for
    /// [`SketchSum::give_buffer`] to reuse.
    pub fn take_buffer(&mut self) -> Option<Vec<u64>> {
        let mut buffer = std::mem::take(self).counts;
        buffer.clear();
        (buffer.capacity() > 0).then_some(buffer)
    }

    /// Gives an empty sum a buffer to grow into (ignored unless the sum is empty).
    pub fn give_buffer(&mut self, mut buffer: Vec<u64>) {
        if self.total == 0 && self.counts.is_empty() {
            buffer.clear();
            self.counts = buffer;
        }
    }

    /// Adds another sum: one addition per bucket of its range.
    pub fn add_sum(&mut self, other: &SketchSum) {
        self.zeros += other.zeros;
        self.total += other.total;
        let Some(last) = other.counts.len().checked_sub(1) else {
            return;
        };
        // The range of a sum is within u16 indexes by construction.
        let high = other
            .offset
            .saturating_add(u16::try_from(last).unwrap_or(u16::MAX));
        self.cover(other.offset, high);
        let start = usize::from(other.offset - self.offset);
        if let Some(slots) = self.counts.get_mut(start..start + other.counts.len()) {
            for (slot, &count) in slots.iter_mut().zip(&other.counts) {
                *slot += count;
            }
        }
    }

    /// Several quantiles (ascending), as [`Sketch::quantile`] (see
    /// [`SketchSum::quantiles_into`]).
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let mut out = [None; N];
        self.quantiles_into(&qs, &mut out);
        out
    }

    /// Several quantiles (`qs` ascending) into `out` (as long), as [`Sketch::quantile`]:
    /// those of the lower half in one walk up from the lowest bucket, the others in one
    /// walk down from the highest (a p99 touches the buckets above it, not the whole
    /// range); both walks skip a chunk of buckets at a time while no rank falls in
    /// them.
    pub fn quantiles_into(&self, qs: &[f64], out: &mut [Option<f64>]) {
        let n = qs.len().min(out.len());
        out.iter_mut().for_each(|slot| *slot = None);
        if self.total == 0 || n == 0 {
            return;
        }
        let mut ranks = [0u64; MAX_QUANTILES];
        let n = n.min(MAX_QUANTILES);
        for (rank, q) in ranks.iter_mut().zip(qs).take(n) {
            *rank =
                ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total) - 1;
        }
        let ranks = &ranks[..n];
        let split = ranks
            .iter()
            .position(|&rank| rank >= self.total / 2)
            .unwrap_or(n);
        let index_at = |at: usize| {
            self.offset
                .saturating_add(u16::try_from(at).unwrap_or(u16::MAX))
        };
        // Up: the ranks below `split`.
        let mut next = 0;
        let mut seen = self.zeros;
        while next < split && ranks[next] < seen {
            out[next] = Some(0.0);
            next += 1;
        }
        let mut at = 0;
        while next < split && at < self.counts.len() {
            let chunk = &self.counts[at..(at + WALK_CHUNK).min(self.counts.len())];
            let sum: u64 = chunk.iter().sum();
            if seen + sum <= ranks[next] {
                seen += sum;
                at += chunk.len();
                continue;
            }
            for &count in chunk {
                seen += count;
                while count > 0 && next < split && ranks[next] < seen {
                    out[next] = Some(value_of(index_at(at)));
                    next += 1;
                }
                at += 1;
            }
        }
        if next < split {
            // Only if the counts fall short of the total: the highest bucket.
            let last = self.counts.iter().rposition(|&count| count > 0);
            for slot in out.iter_mut().take(split).skip(next) {
                *slot = last.map(|at| value_of(index_at(at)));
            }
        }
        // Down: the others, largest first. A rank is in a bucket when fewer values than
        // it lie below the bucket; ranks left at the bottom are zeros.
        let mut above = 0u64;
        let mut next = n;
        let mut end = self.counts.len();
        while next > split && end > 0 {
            let start = end.saturating_sub(WALK_CHUNK);
            let chunk = &self.counts[start..end];
            let sum: u64 = chunk.iter().sum();
            if ranks[next - 1] < self.total.saturating_sub(above + sum) {
                above += sum;
                end = start;
                continue;
            }
            for (offset, &count) in chunk.iter().enumerate().rev() {
                above += count;
                let below = self.total.saturating_sub(above);
                while count > 0 && next > split && ranks[next - 1] >= below {
                    out[next - 1] = Some(value_of(index_at(start + offset)));
                    next -= 1;
                }
            }
            end = start;
        }
        for slot in out.iter_mut().take(next).skip(split) {
            *slot = Some(0.0);
        }
    }

    /// The `q`-quantile by nearest rank, as [`Sketch::quantile`].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total) - 1;
        let mut seen = self.zeros;
        if rank < seen {
            return Some(0.0);
        }
        let mut last = None;
        for (at, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let index = self
                .offset
                .saturating_add(u16::try_from(at).unwrap_or(u16::MAX));
            last = Some(index);
            seen += count;
            if rank < seen {
                return Some(value_of(index));
            }
        }
        last.map(value_of)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    // Most varints of a sketch (index deltas, small counts) are one byte.
    if let Some((&byte, rest)) = input.split_first()
        && byte < 0x80
    {
        *input = rest;
        return Ok(u64::from(byte));
    }
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = input.split_first() else {
            return Err(DecodeError("truncated"));
        };
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[rank]
    }

    #[test]
    fn empty_sketch_has_no_quantiles() {
        let sketch = Sketch::new();
        assert_eq!(sketch.quantile(0.5), None);
        assert_eq!(sketch.count(), 0);
        assert_eq!(Sketch::decode(&sketch.encode()).unwrap(), sketch);
        assert_eq!(Sketch::decode(&[]).unwrap(), sketch);
    }

    #[test]
    fn quantiles_of_a_known_distribution_are_within_one_percent() {
        let mut sketch = Sketch::new();
        for v in 1..=10_000u64 {
            sketch.add(v * 100);
        }
        for (q, exact) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let got = sketch.quantile(q).unwrap();
            assert!(
                (got - exact).abs() / exact <= RELATIVE_ACCURACY + 1e-9,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(sketch.count(), 10_000);
    }

    #[test]
    fn zeros_are_counted_and_reported_as_zero() {
        let mut sketch = Sketch::new();
        sketch.add(0);
        sketch.add(0);
        sketch.add(1000);
        assert_eq!(sketch.quantile(0.5), Some(0.0));
        assert!((sketch.quantile(1.0).unwrap() - 1000.0).abs() <= 10.0);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(Sketch::decode(&[9]).is_err());
        assert!(
            Sketch::decode(&[1, 0, 0]).is_err(),
            "the 1% sketch's buckets differ"
        );
        assert!(Sketch::decode(&[2, 0, 1, 5]).is_err(), "truncated");
        assert!(Sketch::decode(&[2, 0, 1, 5, 0]).is_err(), "zero count");
        assert!(Sketch::decode(&[2, 0, 2, 5, 1, 0, 1]).is_err(), "unsorted");
        assert!(Sketch::decode(&[2, 0, 0, 7]).is_err(), "trailing");
        assert!(Sketch::decode(&[2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn tabulated_bucket_values_are_the_formula_bit_for_bit() {
        for index in 0..=u16::MAX {
            assert_eq!(
                value_of(index).to_bits(),
                value_formula(index).to_bits(),
                "{index}"
            );
        }
        assert!(usize::from(index_of(u64::MAX)) < TABULATED);
    }

    #[test]
    fn wide_sketches_add_in_chunks_like_decoded_ones() {
        // More buckets than one decoding chunk, added onto sums that must grow both ways.
        let mut wide = Sketch::new();
        let mut value = 1.0f64;
        while value < 1e15 {
            wide.add(value as u64);
            value *= 1.03;
        }
        assert!(wide.buckets() > 3 * ENCODED_CHUNK, "{}", wide.buckets());
        let mut narrow = Sketch::new();
        narrow.add(5_000);
        narrow.add(5_000_000);
        let (mut decoded, mut encoded) = (SketchSum::default(), SketchSum::default());
        for sketch in [&narrow, &wide, &narrow] {
            decoded.add(sketch);
            encoded.add_encoded(&sketch.encode()).unwrap();
        }
        assert_eq!(encoded, decoded);
        let mut merged = narrow.clone();
        merged.merge(&wide);
        merged.merge(&narrow);
        for q in [0.0, 0.01, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(encoded.quantile(q), merged.quantile(q), "q{q}");
        }
        // A malformed sketch is refused and, when it fits one chunk, leaves the sum as it was.
        let before = encoded.clone();
        let mut bad = narrow.encode();
        bad.pop();
        assert!(encoded.add_encoded(&bad).is_err());
        assert_eq!(encoded, before);
    }

    proptest! {
        #[test]
        fn quantiles_are_within_relative_accuracy(
            values in proptest::collection::vec(1u64..100_000_000, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut sketch = Sketch::new();
            for &v in &values {
                sketch.add(v);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let exact = exact_quantile(&sorted, q) as f64;
            let got = sketch.quantile(q).unwrap();
            prop_assert!((got - exact).abs() <= exact * (RELATIVE_ACCURACY + 1e-9), "{got} vs {exact}");
        }

        #[test]
        fn sums_answer_like_merged_sketches(
            parts in proptest::collection::vec(proptest::collection::vec(0u64..10_000_000, 0..50), 1..8),
            q in 0.0f64..=1.0,
        ) {
            let mut merged = Sketch::new();
            let mut sum = SketchSum::default();
            let mut encoded_sum = SketchSum::default();
            let mut sparse_sum = SketchSum::default();
            for part in &parts {
                let mut sketch = Sketch::new();
                for &v in part { sketch.add(v); }
                merged.merge(&sketch);
                sum.add(&sketch);
                encoded_sum.add_encoded(&sketch.encode()).unwrap();
                let (indexes, counts): (Vec<u16>, Vec<u32>) = sketch.bins().iter().copied().unzip();
                sparse_sum.add_sparse(sketch.zeros(), &indexes, &counts);
            }
            prop_assert_eq!(&sparse_sum, &sum);
            let mut twice = SketchSum::default();
            twice.add_sum(&sum);
            prop_assert_eq!(sum.count(), merged.count());
            prop_assert_eq!(sum.quantile(q), merged.quantile(q));
            prop_assert_eq!(&encoded_sum, &sum);
            prop_assert_eq!(twice.quantile(q), merged.quantile(q));
            let [a, b, c] = sum.quantiles([0.5, q.max(0.5), 0.99_f64.max(q)]);
            prop_assert_eq!(a, merged.quantile(0.5));
            prop_assert_eq!(b, merged.quantile(q.max(0.5)));
            prop_assert_eq!(c, merged.quantile(0.99_f64.max(q)));
            let low = [0.0, q.min(0.3), q.min(0.5), 0.5, q, 0.9_f64.max(q), 1.0];
            let mut sorted = low;
            sorted.sort_by(f64::total_cmp);
            for (got, q) in sum.quantiles(sorted).into_iter().zip(sorted) {
                prop_assert_eq!(got, merged.quantile(q), "q = {}", q);
            }
        }

        #[test]
        fn merging_equals_recording_together(
            a in proptest::collection::vec(0u64..10_000_000, 0..200),
            b in proptest::collection::vec(0u64..10_000_000, 0..200),
        ) {
            let (mut left, mut right, mut both) = (Sketch::new(), Sketch::new(), Sketch::new());
            for &v in &a { left.add(v); both.add(v); }
            for &v in &b { right.add(v); both.add(v); }
            left.merge(&right);
            prop_assert_eq!(&left, &both);
            prop_assert_eq!(Sketch::decode(&both.encode()).unwrap(), both);
        }
    }
}
