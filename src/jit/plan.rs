//! Buffer planning: where every tensor value lives.
//!
//! Every tensor is seen as a matrix `rows × cols` (all leading axes are rows)
//! with a row stride, at an element offset from a base: one of the function's
//! input buffers, or the arena, one allocation per call holding every
//! intermediate. Slices, rows of a matrix and time steps of a sequence are
//! views (no code, no memory); a time step inside a loop is a view whose
//! offset moves with the loop's step number. Arena slots are assigned by a
//! linear scan over live ranges, so values whose lives do not overlap share
//! memory; a value read by a loop body stays live for the whole loop.

use crate::ir::{Block, Function, Inst, IrError, Op, Ty, Value};
use std::collections::{HashMap, HashSet};

/// Where a matrix starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Function input `i` (in `input_roles` order).
    Input(usize),
    /// The arena.
    Arena,
}

/// A matrix view: element `(r, c)` is at `base + offset + k·k_stride + r·row_stride + c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The buffer.
    pub base: Base,
    /// Static element offset.
    pub offset: isize,
    /// A loop's step number and the elements it moves the view by, for views inside loops.
    pub k: Option<(Value, isize)>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Elements between rows.
    pub row_stride: usize,
}

impl Loc {
    /// Whether the rows follow one another without gaps.
    pub fn contiguous(&self) -> bool {
        self.row_stride == self.cols || self.rows == 1
    }

    /// The largest element index it touches (for bounds checks), assuming `k` in `0..steps`.
    pub fn extent(&self, steps: usize) -> isize {
        let k = self
            .k
            .map_or(0, |(_, s)| s.max(0) * steps.saturating_sub(1) as isize);
        // Vector access reads whole groups of LANES columns.
        let cols = self.cols.div_ceil(LANES) * LANES;
        self.offset + k + ((self.rows.max(1) - 1) * self.row_stride + cols) as isize
    }
}

/// The plan: a location per tensor value, and the arena's size.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Per value (indexed by value id); `None` for step numbers and unused values.
    pub locs: Vec<Option<Loc>>,
    /// Arena elements.
    pub arena_len: usize,
    /// Where each function output is.
    pub outputs: Vec<Loc>,
    /// The element count of each input, as its location sees it.
    pub input_lens: Vec<usize>,
    /// Per-step values planned in their loop's stacked result, with that result and
    /// their group `j` (`Stacking`): the loop stacks them without a copy.
    pub in_slice: HashMap<Value, (Value, usize)>,
    /// Pieces of a `concat_last` that their kernel writes in its columns
    /// (`pieces_in_place`): the concatenation copies only the others.
    pub in_concat: HashSet<Value>,
    /// Steps of a `stack` that their kernel writes in place (`pieces_in_place`): the
    /// stack copies only the others.
    pub in_stack: HashSet<Value>,
}

impl Plan {
    /// Checks that every location stays inside its buffer for every step of its loop:
    /// the guarantee `native` relies on.
    pub fn check_bounds(&self, f: &Function) -> Result<(), IrError> {
        let mut steps: HashMap<Value, usize> = HashMap::new();
        f.walk(f.entry, &mut |i| {
            if let Op::Loop { body, steps: s, .. } = f.inst(i).op {
                steps.insert(f.block(body).params[0], s);
            }
        });
        for (v, loc) in self.locs.iter().enumerate() {
            let Some(loc) = loc else { continue };
            let len = match loc.base {
                Base::Input(i) => self.input_lens[i],
                Base::Arena => self.arena_len,
            } as isize;
            let n = loc
                .k
                .map_or(1, |(k, _)| steps.get(&k).copied().unwrap_or(usize::MAX));
            if n == usize::MAX {
                return Err(IrError(format!("%{v} moves with a step number of no loop")));
            }
            let lowest = loc.offset + loc.k.map_or(0, |(_, s)| s.min(0) * (n as isize - 1));
            if lowest < 0 || loc.extent(n) > len {
                return Err(IrError(format!(
                    "%{v} at {loc:?} leaves its buffer of {len} elements"
                )));
            }
        }
        Ok(())
    }

    /// The location of a tensor value.
    pub fn loc(&self, v: Value) -> Result<Loc, IrError> {
        self.locs[v.index()].ok_or_else(|| IrError(format!("no location for {v}")))
    }
}

/// Arena slots are aligned to this many elements (64 bytes).
const ALIGN: usize = 16;

/// The row stride lstmc gives a `rows × cols` matrix it lays out itself (arena values,
/// weights): a multiple-of-32 width gets 16 elements of padding, because rows a power
/// of two bytes apart fall into the same cache sets, and GEMM on such matrices ran at
/// half speed here (32×1024×256: 340 µs unpadded, 163 µs padded).
///
/// Every row also has room for whole `f32x4` vectors (the stride is a multiple of 4), so
/// generated kernels process a row's last columns as one vector instead of scalars.
pub fn padded_stride(rows: usize, cols: usize) -> usize {
    if rows > 1 && cols >= 32 && cols.is_multiple_of(32) {
        cols + 16
    } else {
        cols.div_ceil(LANES) * LANES
    }
}

/// Lanes of the vectors generated code uses.
pub const LANES: usize = 4;

/// Elements every buffer carries after its last row, so that a vector load at any valid
/// column stays inside the buffer.
pub const SLACK: usize = LANES;

/// The length of a buffer holding `rows × cols` with [`padded_stride`] rows.
pub fn padded_len(rows: usize, cols: usize) -> usize {
    rows * padded_stride(rows, cols) + SLACK
}

fn matrix(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&c, lead)) => (lead.iter().product(), c),
        None => (1, 1),
    }
}

struct Linear {
    /// Position of each reachable instruction in walk order.
    pos: HashMap<Inst, usize>,
    /// For each loop body: (position of the loop, position of its last body instruction).
    loops: HashMap<Block, (usize, usize)>,
    /// Block of each reachable instruction.
    block_of: HashMap<Inst, Block>,
    end: usize,
}

fn linearize(f: &Function) -> Linear {
    let mut l = Linear {
        pos: HashMap::new(),
        loops: HashMap::new(),
        block_of: HashMap::new(),
        end: 0,
    };
    fn go(f: &Function, b: Block, l: &mut Linear) {
        for &i in &f.block(b).insts {
            l.pos.insert(i, l.end);
            l.block_of.insert(i, b);
            l.end += 1;
            if let Op::Loop { body, .. } = f.inst(i).op {
                let start = l.end - 1;
                go(f, body, l);
                l.loops.insert(body, (start, l.end - 1));
            }
        }
    }
    go(f, f.entry, &mut l);
    l
}

/// Where a loop stacks one of its per-step values: group `j` of `per_iter` of the
/// stacked result `stacked`, in the loop whose body is `body` and step number `k`.
struct Stacking {
    body: Block,
    k: Value,
    stacked: Value,
    j: usize,
    per_iter: usize,
}

impl Stacking {
    /// The time slice of `stacked` (planned at `st`) that step `k` writes, for `r`, and
    /// the stacked result as its root; `None` where the shapes do not line up.
    fn view(&self, f: &Function, r: Value, st: &Loc) -> Option<(Loc, Value)> {
        let &[b, t, feat] = f.shape(self.stacked) else {
            return None;
        };
        if matrix(f.shape(r)) != (b, feat) {
            return None;
        }
        let mut loc = step_of(st, b, t, feat, self.j)?;
        loc.k = Some((self.k, (self.per_iter * st.row_stride) as isize));
        Some((loc, self.stacked))
    }
}

/// Step `t` of a `[b, steps, feat]` sequence planned at `st`, whose rows are (batch,
/// step) pairs: `b` rows of `feat`, `steps` rows apart; `None` where `st` is a view.
fn step_of(st: &Loc, b: usize, steps: usize, feat: usize, t: usize) -> Option<Loc> {
    (st.k.is_none() && st.rows == b * steps).then_some(Loc {
        base: st.base,
        offset: st.offset + (t * st.row_stride) as isize,
        k: None,
        rows: b,
        cols: feat,
        row_stride: steps * st.row_stride,
    })
}

/// The per-step values that loops stack, each with where it goes (the first place, if
/// it is stacked twice).
fn stacked_in_place(f: &Function, order: &[Inst]) -> HashMap<Value, Stacking> {
    let mut out = HashMap::new();
    for &i in order {
        let d = f.inst(i);
        let Op::Loop { body, per_iter, .. } = d.op else {
            continue;
        };
        let carried = d.args.len();
        let stacked = &d.results[carried..];
        let Some(&last) = f.block(body).insts.last() else {
            continue;
        };
        let yielded = &f.inst(last).args;
        let k = f.block(body).params[0];
        for j in 0..per_iter {
            for (s, &st) in stacked.iter().enumerate() {
                let Some(&y) = yielded.get(carried + j * stacked.len() + s) else {
                    continue;
                };
                out.entry(y).or_insert(Stacking {
                    body,
                    k,
                    stacked: st,
                    j,
                    per_iter,
                });
            }
        }
    }
    out
}

/// Where a piece computed in place lies in the value that joins it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Piece {
    /// The columns from this one of a `concat_last`.
    Columns(usize),
    /// This step of a `stack`.
    Step(usize),
}

/// The pieces of concatenations and stacks that can be computed in place, each with
/// what joins it and where.
///
/// A backward step's gate adjoints come from one kernel in four pieces that
/// `concat_last` joins for `dz·Uᵀ` (W3's training step copied 6.5 MB so); the kernel may
/// as well write each piece into its columns. Likewise a fully unrolled loop's per-step
/// values that a `stack` joins (a training step's tape: W2's step copied 26 rows of 128
/// so) may be written into their step of it. A piece qualifies when a fused kernel
/// in the joining instruction's block computes it, it is not stacked by a loop (it would
/// have two places), it is a piece once and not an output. A concatenation's piece must
/// start at a multiple of 4 columns and be a multiple of 4 wide unless it ends the row,
/// whose padding takes the last vector, because kernels write rows in whole vectors (a
/// GRU(13)'s third gate at column 26 wrote past its row); the concatenation must cover
/// every column (no zeros to fill). A step of a stack is a whole padded row, so any
/// width fits, and may be a concatenation in turn, whose pieces then lie in that step (a
/// backward step's gate adjoints, stacked for the weight gradient: W2's step copied four
/// rows of 512 so); deeper chains are not placed. What joins the pieces must not be
/// stacked by a loop.
fn pieces_in_place(
    f: &Function,
    order: &[Inst],
    lin: &Linear,
    stacking: &HashMap<Value, Stacking>,
) -> HashMap<Value, (Value, Piece)> {
    let mut out: HashMap<Value, (Value, Piece)> = HashMap::new();
    let mut twice = HashSet::new();
    for &i in order {
        let d = f.inst(i);
        // Computed in this block by a kernel (or, for a stack's step, by a concatenation
        // whose pieces may be in place in turn).
        let made_here = |a: Value, concat_too: bool| {
            f.def_inst(a).is_some_and(|p| {
                let op = &f.inst(p).op;
                (matches!(op, Op::Fused(_)) || concat_too && matches!(op, Op::ConcatLast { .. }))
                    && lin.block_of.get(&p) == lin.block_of.get(&i)
            })
        };
        let mut add = |a: Value, at: (Value, Piece)| {
            let concat_too = matches!(at.1, Piece::Step(_));
            if made_here(a, concat_too) && !stacking.contains_key(&a) && out.insert(a, at).is_some()
            {
                twice.insert(a);
            }
        };
        match &d.op {
            Op::ConcatLast { starts, total } => {
                let c = d.results[0];
                let widths: Vec<usize> = d.args.iter().map(|&a| matrix(f.shape(a)).1).collect();
                if widths.iter().sum::<usize>() != *total {
                    continue;
                }
                for ((&a, &start), &w) in d.args.iter().zip(starts).zip(&widths) {
                    let fits = start % LANES == 0 && (w % LANES == 0 || start + w == *total);
                    let rows_alike = matrix(f.shape(a)).0 == matrix(f.shape(c)).0;
                    if fits && rows_alike {
                        add(a, (c, Piece::Columns(start)));
                    }
                }
            }
            Op::Stack => {
                let s = d.results[0];
                let &[b, _, feat] = f.shape(s) else {
                    continue;
                };
                if stacking.contains_key(&s) {
                    continue;
                }
                for (t, &a) in d.args.iter().enumerate() {
                    if matrix(f.shape(a)) == (b, feat) {
                        add(a, (s, Piece::Step(t)));
                    }
                }
            }
            _ => {}
        }
    }
    let outputs: HashSet<Value> = f.outputs.iter().map(|&(_, v)| v).collect();
    out.retain(|a, _| !twice.contains(a) && !outputs.contains(a));
    // One level of nesting: a piece of a concatenation that is a step of a stack lies in
    // that step; nothing deeper.
    let deep: HashSet<Value> = out
        .iter()
        .filter(|(_, (c, _))| out.get(c).is_some_and(|(c2, _)| out.contains_key(c2)))
        .map(|(&a, _)| a)
        .collect();
    out.retain(|a, _| !deep.contains(a));
    out
}

/// Carried values that can be computed in their loop parameter's slot, each with that
/// parameter: the loop then passes them to the next step without a copy (W3's forward
/// copied h and c, 32×256 each, at every other step). A value qualifies when an
/// instruction of the body computes it into storage of its own (not a view, not
/// stacked, not a piece in place, not an output) after the body's last read of the
/// parameter and of its views: the parameter is dead by then. A parameter the loop
/// also stacks (a training tape of h and c) is read at the end of the body, so its
/// successor keeps a slot of its own.
fn carried_in_place(
    f: &Function,
    order: &[Inst],
    lin: &Linear,
    stacking: &HashMap<Value, Stacking>,
    piece_of: &HashMap<Value, (Value, Piece)>,
) -> HashMap<Value, Value> {
    let is_view = |op: &Op| {
        matches!(
            op,
            Op::SliceLast { .. } | Op::Row { .. } | Op::TimeStep { .. }
        )
    };
    let outputs: HashSet<Value> = f.outputs.iter().map(|&(_, v)| v).collect();
    let mut out = HashMap::new();
    for &i in order {
        let d = f.inst(i);
        let Op::Loop { body, .. } = d.op else {
            continue;
        };
        let insts = &f.block(body).insts;
        if insts
            .iter()
            .any(|&j| matches!(f.inst(j).op, Op::Loop { .. }))
        {
            continue;
        }
        let Some(&last) = insts.last() else {
            continue;
        };
        // The last position in the body where each value, or a view of it, is read.
        let mut viewed: HashMap<Value, Value> = HashMap::new();
        let mut read: HashMap<Value, usize> = HashMap::new();
        for &j in insts {
            let dj = f.inst(j);
            for a in &dj.args {
                let a = viewed.get(a).unwrap_or(a);
                let at = read.entry(*a).or_insert(0);
                *at = (*at).max(lin.pos[&j]);
            }
            if is_view(&dj.op) {
                let a = *viewed.get(&dj.args[0]).unwrap_or(&dj.args[0]);
                viewed.insert(dj.results[0], a);
            }
        }
        let carried = d.args.len();
        let yielded = &f.inst(last).args[..carried];
        for (&y, &p) in yielded.iter().zip(&f.block(body).params[1..]) {
            let Some(def) = f.def_inst(y) else {
                continue;
            };
            let fresh = lin.block_of.get(&def) == Some(&body)
                && !is_view(&f.inst(def).op)
                && !matches!(f.inst(def).op, Op::Update(_))
                && !stacking.contains_key(&y)
                && !piece_of.contains_key(&y)
                && !outputs.contains(&y)
                && yielded.iter().filter(|&&v| v == y).count() == 1;
            if fresh && read.get(&p).is_none_or(|&at| at < lin.pos[&def]) {
                out.insert(y, p);
            }
        }
    }
    out
}

/// Plans the buffers of an optimized function.
pub fn plan(f: &Function) -> Result<Plan, IrError> {
    let lin = linearize(f);
    let n = f.values.len();
    let mut locs: Vec<Option<Loc>> = vec![None; n];
    // Storage that needs an arena slot: (value, elements).
    let mut owned: Vec<Value> = Vec::new();
    // A view's root: the value whose storage it reads.
    let mut root: Vec<Value> = (0..n as u32).map(Value).collect();
    // Loop results that alias the loop's carried parameters.
    let mut alias: HashMap<Value, Value> = HashMap::new();
    let mut def_pos: Vec<usize> = vec![0; n];
    let mut input_lens = Vec::new();
    let mut updates: Vec<Inst> = Vec::new();

    for (i, &p) in f.block(f.entry).params.iter().enumerate() {
        let (rows, cols) = matrix(f.shape(p));
        // Every input is staged by the runtime with padded rows and slack.
        let row_stride = padded_stride(rows, cols);
        locs[p.index()] = Some(Loc {
            base: Base::Input(i),
            offset: 0,
            k: None,
            rows,
            cols,
            row_stride,
        });
        input_lens.push(padded_len(rows, cols));
    }
    let mut order = Vec::new();
    f.walk(f.entry, &mut |i| order.push(i));
    let stacking = stacked_in_place(f, &order);
    let piece_of = pieces_in_place(f, &order, &lin, &stacking);
    let carried_at = carried_in_place(f, &order, &lin, &stacking, &piece_of);
    let mut in_slice = HashMap::new();
    let mut in_concat = HashSet::new();
    let mut in_stack = HashSet::new();
    // Concatenations and stacks placed early, at their first piece in place.
    let mut early: HashSet<Value> = HashSet::new();
    for &i in &order {
        let d = f.inst(i);
        let at = lin.pos[&i];
        for &r in &d.results {
            if !early.contains(&r) {
                def_pos[r.index()] = at;
            }
        }
        let own = |locs: &mut Vec<Option<Loc>>, owned: &mut Vec<Value>, v: Value| {
            let (rows, cols) = matrix(f.shape(v));
            locs[v.index()] = Some(Loc {
                base: Base::Arena,
                offset: 0,
                k: None,
                rows,
                cols,
                row_stride: padded_stride(rows, cols),
            });
            owned.push(v);
        };
        match &d.op {
            Op::SliceLast { start, len } => {
                let a = locs[d.args[0].index()]
                    .ok_or_else(|| IrError(format!("{i}: slice of a value without storage")))?;
                locs[d.results[0].index()] = Some(Loc {
                    offset: a.offset + *start as isize,
                    cols: *len,
                    ..a
                });
                root[d.results[0].index()] = root[d.args[0].index()];
            }
            Op::Row { index } => {
                let a = locs[d.args[0].index()]
                    .ok_or_else(|| IrError(format!("{i}: row of a value without storage")))?;
                locs[d.results[0].index()] = Some(Loc {
                    offset: a.offset + (*index * a.row_stride) as isize,
                    rows: 1,
                    ..a
                });
                root[d.results[0].index()] = root[d.args[0].index()];
            }
            Op::TimeStep {
                reverse,
                stride,
                offset,
            } => {
                let a = locs[d.args[0].index()]
                    .ok_or_else(|| IrError(format!("{i}: time step of a value without storage")))?;
                let &[b, t, feat] = f.shape(d.args[0]) else {
                    return Err(IrError(format!("{i}: time step of a non-sequence")));
                };
                // Rows of the source are (batch, time) pairs in order, `rs` apart.
                if a.k.is_some() || a.rows != b * t || a.cols != feat {
                    return Err(IrError(format!(
                        "{i}: time step of a sequence that is a view"
                    )));
                }
                let rs = a.row_stride;
                let (first, per_k) = if *reverse {
                    (((t - 1 - offset) * rs) as isize, -((stride * rs) as isize))
                } else {
                    ((offset * rs) as isize, (stride * rs) as isize)
                };
                let k = d.args.get(1).map(|&kv| (kv, per_k));
                locs[d.results[0].index()] = Some(Loc {
                    base: a.base,
                    offset: a.offset + first,
                    k,
                    rows: b,
                    cols: feat,
                    row_stride: t * rs,
                });
                root[d.results[0].index()] = root[d.args[0].index()];
            }
            Op::Loop { body, .. } => {
                let params = &f.block(*body).params;
                let carried = d.args.len();
                for (&p, &r) in params[1..].iter().zip(&d.results) {
                    own(&mut locs, &mut owned, p);
                    def_pos[p.index()] = at;
                    locs[r.index()] = locs[p.index()];
                    alias.insert(r, p);
                    root[r.index()] = p;
                }
                for &r in &d.results[carried..] {
                    own(&mut locs, &mut owned, r);
                }
            }
            Op::Yield => {}
            Op::Update(_) => {
                // In place: the new weight and slots are written over the inputs.
                for (&r, &a) in d
                    .results
                    .iter()
                    .zip([d.args[0], d.args[2], d.args[3]].iter())
                {
                    let l = locs[a.index()]
                        .filter(|l| matches!(l.base, Base::Input(_)) && l.k.is_none())
                        .ok_or_else(|| {
                            IrError(format!("{i}: update of a value that is not an input"))
                        })?;
                    locs[r.index()] = Some(l);
                    root[r.index()] = root[a.index()];
                }
                updates.push(i);
            }
            _ => {
                // A value's own place: its time slice of the stacked result, when it is a
                // per-step value computed in its loop's body and stacked by it (no copy
                // then), else an arena slot.
                let place =
                    |r: Value,
                     locs: &mut Vec<Option<Loc>>,
                     owned: &mut Vec<Value>,
                     root: &mut Vec<Value>,
                     in_slice: &mut HashMap<Value, (Value, usize)>| {
                        let view = stacking
                            .get(&r)
                            .filter(|s| lin.block_of[&i] == s.body)
                            .and_then(|s| Some((s, locs[s.stacked.index()]?)))
                            .and_then(|(s, st)| s.view(f, r, &st));
                        match view {
                            Some((loc, stacked)) => {
                                locs[r.index()] = Some(loc);
                                root[r.index()] = stacked;
                                in_slice.insert(r, (stacked, stacking[&r].j));
                            }
                            None => own(locs, owned, r),
                        }
                    };
                for &r in &d.results {
                    if f.ty(r) == &Ty::Index || early.contains(&r) {
                        continue;
                    }
                    if let Some(&p) = carried_at.get(&r) {
                        locs[r.index()] = locs[p.index()];
                        root[r.index()] = root[p.index()];
                        continue;
                    }
                    if !piece_of.contains_key(&r) {
                        place(r, &mut locs, &mut owned, &mut root, &mut in_slice);
                        continue;
                    }
                    // A piece in place: what joins it gets its place now, live from here;
                    // and when that is a piece itself (a concatenation that is a step of a
                    // stack), what joins that first.
                    let mut unplaced = Vec::new();
                    let mut x = r;
                    while let Some(&(c, _)) = piece_of.get(&x) {
                        if !early.insert(c) {
                            break;
                        }
                        def_pos[c.index()] = at;
                        unplaced.push(c);
                        x = c;
                    }
                    for x in unplaced.into_iter().rev().chain([r]) {
                        let Some(&(c, piece)) = piece_of.get(&x) else {
                            place(x, &mut locs, &mut owned, &mut root, &mut in_slice);
                            continue;
                        };
                        let (rows, cols) = matrix(f.shape(x));
                        let loc = locs[c.index()].and_then(|cl| match piece {
                            Piece::Columns(start) => Some(Loc {
                                offset: cl.offset + start as isize,
                                cols,
                                ..cl
                            }),
                            Piece::Step(t) => step_of(&cl, rows, f.shape(c)[1], cols, t),
                        });
                        let Some(loc) = loc else {
                            place(x, &mut locs, &mut owned, &mut root, &mut in_slice);
                            continue;
                        };
                        locs[x.index()] = Some(loc);
                        root[x.index()] = root[c.index()];
                        match piece {
                            Piece::Columns(_) => in_concat.insert(x),
                            Piece::Step(_) => in_stack.insert(x),
                        };
                    }
                }
            }
        }
    }

    // Live ranges: last use of each root, with loops extending what their bodies read.
    let mut last: Vec<usize> = def_pos.clone();
    let touch = |v: Value, at: usize, last: &mut Vec<usize>| {
        let r = root[v.index()];
        last[r.index()] = last[r.index()].max(at);
    };
    for &i in &order {
        let d = f.inst(i);
        let mut at = lin.pos[&i];
        // A use inside a loop body of a value defined outside it lasts the whole loop.
        let b = lin.block_of[&i];
        for &a in &d.args {
            if let Some(&(start, end)) = lin.loops.get(&b) {
                let r = root[a.index()];
                if def_pos[r.index()] < start {
                    at = at.max(end);
                }
            }
            touch(a, at, &mut last);
            at = lin.pos[&i];
        }
        // Carried parameters live until the loop ends.
        if let Op::Loop { body, .. } = f.inst(i).op {
            let (_, end) = lin.loops[&body];
            for &p in &f.block(body).params[1..] {
                touch(p, end, &mut last);
            }
            for &r in &d.results {
                touch(r, end, &mut last);
            }
        }
    }
    // An update overwrites its inputs: nothing may read them after it.
    for &u in &updates {
        let at = lin.pos[&u];
        let d = f.inst(u);
        for a in [d.args[0], d.args[2], d.args[3]] {
            if last[root[a.index()].index()] > at {
                return Err(IrError(format!(
                    "{u}: {a} is read after its update, which overwrites it"
                )));
            }
        }
    }
    for (_, v) in &f.outputs {
        touch(*v, lin.end, &mut last);
    }

    // Linear scan over owned values by start.
    owned.sort_by_key(|v| def_pos[v.index()]);
    let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, len)
    let mut active: Vec<(usize, usize, usize)> = Vec::new(); // (last use, offset, len)
    let mut arena_len = 0usize;
    let mut offsets: HashMap<Value, usize> = HashMap::new();
    for v in owned {
        let start = def_pos[v.index()];
        active.retain(|&(end, off, len)| {
            if end < start {
                free.push((off, len));
                false
            } else {
                true
            }
        });
        let loc = locs[v.index()].ok_or_else(|| IrError(format!("{v} has no location")))?;
        let need = (loc.rows * loc.row_stride).div_ceil(ALIGN) * ALIGN;
        let slot = free
            .iter()
            .enumerate()
            .filter(|(_, &(_, len))| len >= need)
            .min_by_key(|(_, &(_, len))| len)
            .map(|(k, _)| k);
        let off = match slot {
            Some(k) => {
                let (off, len) = free.remove(k);
                if len > need {
                    free.push((off + need, len - need));
                }
                off
            }
            None => {
                let off = arena_len;
                arena_len = arena_len
                    .checked_add(need)
                    .ok_or_else(|| IrError("arena size overflows".into()))?;
                off
            }
        };
        active.push((last[v.index()], off, need));
        offsets.insert(v, off);
    }
    // Rebase arena locations (views included) on their root's slot.
    for v in 0..n {
        if let Some(loc) = &mut locs[v] {
            if loc.base == Base::Arena {
                let r = root[v];
                let r = alias.get(&r).copied().unwrap_or(r);
                let off = offsets
                    .get(&r)
                    .ok_or_else(|| IrError(format!("%{v} has no arena slot")))?;
                loc.offset += *off as isize;
            }
        }
    }
    for (role, v) in &f.outputs {
        let in_arena = matches!(
            locs[v.index()],
            Some(Loc {
                base: Base::Arena,
                ..
            })
        );
        if !in_arena && !matches!(role, crate::ir::OutputRole::Updated(_)) {
            return Err(IrError(format!("output {role} does not live in the arena")));
        }
    }
    let outputs = f
        .outputs
        .iter()
        .map(|(_, v)| locs[v.index()].ok_or_else(|| IrError(format!("output {v} has no storage"))))
        .collect::<Result<_, _>>()?;
    // Slack after the last slot, for vector reads of its last row.
    let arena_len = arena_len + SLACK;
    Ok(Plan {
        locs,
        arena_len,
        outputs,
        input_lens,
        in_slice,
        in_concat,
        in_stack,
    })
}
