//! Elementwise fusion: chains of `bias_add`, `add`/`sub`/`mul`, activations, their
//! gradients (`*_grad`) and `one_minus` over one shape become one `fused` kernel,
//! evaluated in one pass over memory: an LSTM step's gate activations, cell update and output
//! (four bias adds, eight adds, four activations, three products, a tanh) are
//! one kernel with outputs `h` and `c`.
//!
//! Clusters grow in program order. An instruction joins the open clusters of
//! its operands that have its shape (merging them). A cluster closes as soon
//! as anything outside it uses one of its values (an instruction, a loop
//! body, a function output), so that the kernel, placed where its last member
//! stood, never needs a value computed after it.

use super::Options;
use crate::ir::{BinOp, Block, FNode, Function, FusedKernel, Inst, IrError, Op, Value};
use crate::model::Activation;
use std::collections::{HashMap, HashSet};

fn elementwise(op: &Op) -> bool {
    match op {
        Op::BiasAdd | Op::Binary(_) | Op::Act(_) | Op::OneMinus => true,
        Op::ActGrad(a) => *a != Activation::Softmax,
        _ => false,
    }
}

struct Cluster {
    members: Vec<Inst>,
    shape: Vec<usize>,
    open: bool,
}

/// Runs the pass on every block.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        fuse_block(f, b)?;
    }
    Ok(())
}

fn fuse_block(f: &mut Function, b: Block) -> Result<(), IrError> {
    let insts = f.block(b).insts.clone();
    let mut clusters: Vec<Cluster> = Vec::new();
    // Which cluster produced a value (only for values of this block's elementwise instructions).
    let mut cluster_of: HashMap<Value, usize> = HashMap::new();
    let mut forward: Vec<usize> = Vec::new(); // merged clusters point to their survivor
    fn find(forward: &[usize], mut c: usize) -> usize {
        while forward[c] != c {
            c = forward[c];
        }
        c
    }
    for &i in &insts {
        let d = f.inst(i).clone();
        if elementwise(&d.op) {
            let shape = f.shape(d.results[0]).to_vec();
            let mut join: Vec<usize> = Vec::new();
            for (pos, a) in d.args.iter().enumerate() {
                let Some(&c) = cluster_of.get(a) else {
                    continue;
                };
                let c = find(&forward, c);
                let is_bias = d.op == Op::BiasAdd && pos == 1;
                if clusters[c].open && clusters[c].shape == shape && !is_bias {
                    if !join.contains(&c) {
                        join.push(c);
                    }
                } else {
                    clusters[c].open = false;
                }
            }
            let target = match join.split_first() {
                None => {
                    clusters.push(Cluster {
                        members: Vec::new(),
                        shape,
                        open: true,
                    });
                    forward.push(clusters.len() - 1);
                    clusters.len() - 1
                }
                Some((&first, rest)) => {
                    for &c in rest {
                        let moved = std::mem::take(&mut clusters[c].members);
                        clusters[first].members.extend(moved);
                        clusters[c].open = false;
                        forward[c] = first;
                    }
                    first
                }
            };
            clusters[target].members.push(i);
            cluster_of.insert(d.results[0], target);
        } else {
            // Anything else that uses a cluster's value closes it, including uses inside a loop body.
            let mut used = d.args.clone();
            if let Op::Loop { body, .. } = d.op {
                used.extend(f.free_uses(body));
            }
            for a in used {
                if let Some(&c) = cluster_of.get(&a) {
                    let c = find(&forward, c);
                    clusters[c].open = false;
                }
            }
        }
    }
    // Build the kernels.
    let order: HashMap<Inst, usize> = insts.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let uses = f.use_counts();
    let mut place: HashMap<Inst, Inst> = HashMap::new(); // last member -> fused instruction
    let mut removed: HashSet<Inst> = HashSet::new();
    for c in clusters.iter_mut().filter(|c| !c.members.is_empty()) {
        c.members.sort_by_key(|i| order[i]);
        let members: HashSet<Inst> = c.members.iter().copied().collect();
        let mut node_of: HashMap<Value, usize> = HashMap::new();
        let mut inputs: Vec<(Value, bool)> = Vec::new();
        let mut nodes: Vec<FNode> = Vec::new();
        let input_node = |v: Value,
                          bc: bool,
                          nodes: &mut Vec<FNode>,
                          inputs: &mut Vec<(Value, bool)>|
         -> usize {
            let k = match inputs.iter().position(|&x| x == (v, bc)) {
                Some(k) => k,
                None => {
                    inputs.push((v, bc));
                    inputs.len() - 1
                }
            };
            match nodes.iter().position(|n| *n == FNode::Input(k)) {
                Some(n) => n,
                None => {
                    nodes.push(FNode::Input(k));
                    nodes.len() - 1
                }
            }
        };
        // Uses of each member's result inside the cluster.
        let mut inner_uses: HashMap<Value, usize> = HashMap::new();
        for &m in &c.members {
            for a in &f.inst(m).args {
                *inner_uses.entry(*a).or_default() += 1;
            }
        }
        let mut outputs: Vec<(Value, usize)> = Vec::new();
        for &m in &c.members {
            let d = f.inst(m).clone();
            let operand =
                |k: usize, nodes: &mut Vec<FNode>, inputs: &mut Vec<(Value, bool)>| -> usize {
                    let v = d.args[k];
                    match node_of.get(&v) {
                        Some(&n) => n,
                        None => input_node(v, d.op == Op::BiasAdd && k == 1, nodes, inputs),
                    }
                };
            let node = match d.op {
                Op::BiasAdd => FNode::Bin(
                    BinOp::Add,
                    operand(0, &mut nodes, &mut inputs),
                    operand(1, &mut nodes, &mut inputs),
                ),
                Op::Binary(op) => FNode::Bin(
                    op,
                    operand(0, &mut nodes, &mut inputs),
                    operand(1, &mut nodes, &mut inputs),
                ),
                Op::Act(a) => FNode::Act(a, operand(0, &mut nodes, &mut inputs)),
                Op::OneMinus => FNode::OneMinus(operand(0, &mut nodes, &mut inputs)),
                Op::ActGrad(a) if a.grad_from_output() => {
                    let y = operand(0, &mut nodes, &mut inputs);
                    FNode::ActGrad(a, y, y, operand(1, &mut nodes, &mut inputs))
                }
                Op::ActGrad(a) => FNode::ActGrad(
                    a,
                    operand(0, &mut nodes, &mut inputs),
                    operand(1, &mut nodes, &mut inputs),
                    operand(2, &mut nodes, &mut inputs),
                ),
                _ => unreachable!("only elementwise ops are clustered"),
            };
            nodes.push(node);
            let r = d.results[0];
            node_of.insert(r, nodes.len() - 1);
            if uses[r.index()] > inner_uses.get(&r).copied().unwrap_or(0) {
                outputs.push((r, nodes.len() - 1));
            }
        }
        if outputs.is_empty() {
            continue; // dead; DCE removes it
        }
        let kernel = FusedKernel {
            broadcast: inputs.iter().map(|&(_, bc)| bc).collect(),
            nodes,
            outputs: outputs.iter().map(|&(_, n)| n).collect(),
        };
        let last = *c.members.last().expect("cluster has members");
        let origin = f.inst(last).origin;
        let fused = f.make(
            Op::Fused(kernel),
            inputs.iter().map(|&(v, _)| v).collect(),
            origin,
        )?;
        let results = f.inst(fused).results.clone();
        for ((old, _), new) in outputs.iter().zip(results) {
            f.replace_uses(*old, new);
        }
        place.insert(last, fused);
        removed.extend(members);
    }
    let mut out = Vec::with_capacity(insts.len());
    for i in insts {
        if let Some(&fused) = place.get(&i) {
            out.push(fused);
        } else if !removed.contains(&i) {
            out.push(i);
        }
    }
    f.blocks[b.index()].insts = out;
    Ok(())
}
