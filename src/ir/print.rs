//! The textual form of the IR, as `lstmc ir` prints it and golden tests compare it.
//!
//! ```text
//! func @seed(x: f32[1,4,1], ...) {
//!   # layer 0, line 2:1
//!   %4 = slice_last[0..3] %1 : f32[1,3]
//!   %12, %13 = loop[4] (%10, %11) {
//!   ^bb1(%14: index, %15: f32[1,3], %16: f32[1,3]):
//!     ...
//!     yield %30, %29
//!   } : f32[1,3], f32[1,3]
//!   return y = %12, state layers.0.h = %12, ...
//! }
//! ```

use super::{Block, Function, Op, Origin};
use crate::front::SourceFile;
use std::fmt::Write;

/// Prints a function; with a source, each instruction notes the line and column it came from.
pub fn print(f: &Function, source: Option<&SourceFile>) -> String {
    let mut out = String::new();
    let entry = f.block(f.entry);
    let _ = writeln!(out, "func @{} {{", f.name);
    for (role, &v) in f.input_roles.iter().zip(&entry.params) {
        let _ = writeln!(out, "  {v}: {} = input {role}", f.ty(v));
    }
    let mut last = None;
    block(f, f.entry, 1, source, &mut last, &mut out);
    let rets: Vec<String> = f
        .outputs
        .iter()
        .map(|(r, v)| format!("{r} = {v}"))
        .collect();
    let _ = writeln!(out, "  return {}", rets.join(", "));
    out.push_str("}\n");
    out
}

fn block(
    f: &Function,
    b: Block,
    depth: usize,
    source: Option<&SourceFile>,
    last: &mut Option<Origin>,
    out: &mut String,
) {
    let pad = "  ".repeat(depth);
    for &i in &f.block(b).insts {
        let data = f.inst(i);
        let args: Vec<String> = data.args.iter().map(|a| a.to_string()).collect();
        let res: Vec<String> = data.results.iter().map(|r| r.to_string()).collect();
        let tys: Vec<String> = data.results.iter().map(|r| f.ty(*r).to_string()).collect();
        // A location note when the origin changes, rather than on every line.
        if let (Some(o), Some(s)) = (data.origin, source) {
            if *last != Some(o) {
                let (line, col) = s.line_col(o.span.start);
                let what = o.layer.map_or(String::new(), |l| format!("layer {l}, "));
                let _ = writeln!(out, "{pad}# {what}line {line}:{col}");
                *last = Some(o);
            }
        }
        let lhs = if res.is_empty() {
            String::new()
        } else {
            format!("{} = ", res.join(", "))
        };
        match &data.op {
            Op::Loop { body, .. } => {
                let _ = writeln!(
                    out,
                    "{pad}{lhs}{} ({}) {{",
                    data.op.mnemonic(),
                    args.join(", ")
                );
                let params: Vec<String> = f
                    .block(*body)
                    .params
                    .iter()
                    .map(|p| format!("{p}: {}", f.ty(*p)))
                    .collect();
                let _ = writeln!(out, "{pad}{body}({}):", params.join(", "));
                block(f, *body, depth + 1, source, last, out);
                let _ = writeln!(out, "{pad}}} : {}", tys.join(", "));
            }
            op => {
                let ty = if tys.is_empty() {
                    String::new()
                } else {
                    format!(" : {}", tys.join(", "))
                };
                let sep = if args.is_empty() { "" } else { " " };
                let _ = writeln!(
                    out,
                    "{pad}{lhs}{}{sep}{}{ty}",
                    op.mnemonic(),
                    args.join(", ")
                );
            }
        }
    }
}
