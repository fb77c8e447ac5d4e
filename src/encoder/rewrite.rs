//! Rewrites of an ONNX graph before tract reads it.
//!
//! [`fold_q4`]: the converter (models/convert/e5.py, `q4_unpack` and `q4_hooks`) stores
//! multilingual-e5-small's matrices as the source's 4-bit blocks and unpacks them in the
//! graph with plain ONNX ops on constants, so that onnxruntime and tract both run the file:
//!
//! ```text
//! packed u8 [out, blocks, 16] ─Cast(i32)─Div 16─Mul 16─Sub─Concat(lo, hi)─Cast(f32)─Sub 8─┐
//! scales f16 [out, blocks, 1] ─Cast(f32)───────────────────────────────────────────────Mul─Reshape [out, in]─Transpose─▶ W [in, out]
//! ```
//!
//! tract evaluates such constant chains when it types the model, and holds every
//! intermediate of every chain at once: about 32 bytes a weight, 680 MB of peak memory for
//! E5's 21 million (measured: VmHWM 749 MB after `into_typed` for the tower alone). The
//! board's service is capped at 1 GB. [`fold_q4`] replaces each chain by the one f32
//! initializer it computes, straight from the blocks (4 bytes a weight); the result is the
//! same numbers (tested against the unrewritten graph in tests/encoder.rs).
//!
//! [`prune`]: drop what no graph output depends on (also used by `export`).

use std::collections::{HashMap, HashSet};
use tract_onnx::pb;
use tract_onnx::prelude::f16;

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const FLOAT16: i32 = 10;

/// A graph input or output of f32 rows: `[N, width]` (a named width when it is not known).
pub fn value_info(name: &str, width: Option<usize>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let d = |v| Dimension {
        value: Some(v),
        ..Default::default()
    };
    let width = width.map_or(Value::DimParam(format!("{name}_width")), |w| {
        Value::DimValue(w as i64)
    });
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![d(Value::DimParam("N".into())), d(width)],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Drops the nodes and initializers no graph output depends on.
pub fn prune(g: &mut pb::GraphProto) {
    let mut needed: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().cloned());
        }
    }
    let mut it = keep.iter();
    g.node.retain(|_| *it.next().expect("one flag per node"));
    g.initializer.retain(|t| needed.contains(&t.name));
}

/// One 4-bit chain found in the graph.
struct Chain {
    packed: usize,
    scales: usize,
    /// index of the final Transpose node
    transpose: usize,
}

/// Replaces every 4-bit unpacking chain (see the module doc) by its f32 result; returns how
/// many. Chains that do not have exactly the expected shape are left to tract.
pub fn fold_q4(g: &mut pb::GraphProto) -> usize {
    let chains = find_chains(g);
    let mut new_inits = Vec::with_capacity(chains.len());
    let mut folded_transposes = HashSet::new();
    for c in &chains {
        let (p, s) = (&g.initializer[c.packed], &g.initializer[c.scales]);
        let (rows, blocks) = (p.dims[0] as usize, p.dims[1] as usize);
        let cols = blocks * 32;
        // W[r, b·32 + j] = (low nibble − 8)·s, W[r, b·32 + 16 + j] = (high nibble − 8)·s;
        // stored transposed, [in = cols, out = rows]
        let mut wt = vec![0f32; rows * cols];
        for r in 0..rows {
            for b in 0..blocks {
                let k = r * blocks + b;
                let scale = f16::from_bits(u16::from_le_bytes([
                    s.raw_data[2 * k],
                    s.raw_data[2 * k + 1],
                ]))
                .to_f32();
                for j in 0..16 {
                    let byte = p.raw_data[k * 16 + j];
                    let (lo, hi) = ((byte % 16) as f32 - 8.0, (byte / 16) as f32 - 8.0);
                    wt[(b * 32 + j) * rows + r] = lo * scale;
                    wt[(b * 32 + 16 + j) * rows + r] = hi * scale;
                }
            }
        }
        let t = &g.node[c.transpose];
        new_inits.push(pb::TensorProto {
            name: t.output[0].clone(),
            dims: vec![cols as i64, rows as i64],
            data_type: FLOAT,
            raw_data: wt.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        folded_transposes.insert(c.transpose);
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !folded_transposes.contains(&(i - 1))
    });
    g.initializer.extend(new_inits);
    prune(g);
    chains.len()
}

fn find_chains(g: &pb::GraphProto) -> Vec<Chain> {
    let inits: HashMap<&str, usize> = g
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(i);
        }
        for y in &n.output {
            producer.insert(y.as_str(), i);
        }
    }
    let chain_ops = ["Cast", "Div", "Mul", "Sub", "Concat", "Reshape"];
    let mut out = Vec::new();
    for (pi, p) in g.initializer.iter().enumerate() {
        if p.data_type != UINT8 || p.dims.len() != 3 || p.dims[2] != 16 {
            continue;
        }
        let (rows, blocks) = (p.dims[0] as usize, p.dims[1] as usize);
        if p.raw_data.len() != rows * blocks * 16 {
            continue;
        }
        // the unpacking starts with the only consumer, a Cast; the word table's Gather is not one
        let Some([first]) = consumers.get(p.name.as_str()).map(Vec::as_slice) else {
            continue;
        };
        if g.node[*first].op_type != "Cast" {
            continue;
        }
        // walk forward to the Transpose; every node on the way must be an unpacking op whose
        // outputs stay inside the chain
        let mut seen = HashSet::from([*first]);
        let mut todo = vec![*first];
        let mut transposes = Vec::new();
        let mut ok = true;
        while let Some(n) = todo.pop() {
            for y in &g.node[n].output {
                for &c in consumers.get(y.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                    let op = g.node[c].op_type.as_str();
                    if op == "Transpose" {
                        transposes.push(c);
                    } else if chain_ops.contains(&op) {
                        if seen.insert(c) {
                            todo.push(c);
                        }
                    } else {
                        ok = false;
                    }
                }
            }
        }
        transposes.sort_unstable();
        transposes.dedup();
        let [transpose] = transposes.as_slice() else {
            continue;
        };
        let perm_ok = g.node[*transpose]
            .attribute
            .iter()
            .any(|a| a.name == "perm" && a.ints == [1, 0]);
        // the scales: a Cast of an f16 initializer with one value a block, feeding the chain
        let scales = seen.iter().flat_map(|&n| &g.node[n].input).find_map(|x| {
            let pn = *producer.get(x.as_str())?;
            let node = &g.node[pn];
            if node.op_type != "Cast" || seen.contains(&pn) {
                return None;
            }
            let si = *inits.get(node.input.first()?.as_str())?;
            let s = &g.initializer[si];
            (s.data_type == FLOAT16 && s.raw_data.len() == 2 * rows * blocks).then_some(si)
        });
        if let (true, true, Some(scales)) = (ok, perm_ok, scales) {
            out.push(Chain {
                packed: pi,
                scales,
                transpose: *transpose,
            });
        }
    }
    out
}
